"""Reference PPO: a faithful port of CleanRL's ``cleanrl/ppo_continuous_action.py`` to gymnasium 1.x.

Source: https://github.com/vwxyzjn/cleanrl/blob/master/cleanrl/ppo_continuous_action.py
(docs: https://docs.cleanrl.dev/rl-algorithms/ppo/#ppo_continuous_actionpy)

Used as the reference in our PPO throughput benchmark: our own PPO's env-steps/s and learning are
compared against this file in the same process. Structure, defaults and math are CleanRL's; every
deviation is marked with a ``# PORT:`` comment. Deliberately dropped (pure overhead, off the
measured path): video capture, Weights & Biases, TensorBoard, model saving / HF upload.
Everything on the hot path (per-step torch inference, ``.cpu().numpy()`` round trips, the
update) is kept exactly as CleanRL has it.
"""

import os
import random
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
import tyro
from torch.distributions.normal import Normal

# PORT: CleanRL's optional `dm_control`/`shimmy` registration block is dropped (MuJoCo-only here;
# it only printed an ImportError when those packages are absent).


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=False`"""
    cuda: bool = True
    """if toggled, cuda will be enabled by default"""
    # PORT: track / wandb_project_name / wandb_entity / capture_video / save_model /
    # upload_model / hf_entity are dropped together with W&B, video capture and model upload.
    # PORT: added for the benchmark (not in CleanRL): torch intra-op thread count.
    torch_threads: int | None = None
    """if set, `torch.set_num_threads(torch_threads)` for the run (restored afterwards)"""

    # Algorithm specific arguments
    # PORT: default env HalfCheetah-v4 -> HalfCheetah-v5 (v5 is current in gymnasium 1.x).
    env_id: str = "HalfCheetah-v5"
    """the id of the environment"""
    total_timesteps: int = 1000000
    """total timesteps of the experiments"""
    learning_rate: float = 3e-4
    """the learning rate of the optimizer"""
    num_envs: int = 1
    """the number of parallel game environments"""
    num_steps: int = 2048
    """the number of steps to run in each environment per policy rollout"""
    anneal_lr: bool = True
    """Toggle learning rate annealing for policy and value networks"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda for the general advantage estimation"""
    num_minibatches: int = 32
    """the number of mini-batches"""
    update_epochs: int = 10
    """the K epochs to update the policy"""
    norm_adv: bool = True
    """Toggles advantages normalization"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient"""
    clip_vloss: bool = True
    """Toggles whether or not to use a clipped loss for the value function, as per the paper."""
    ent_coef: float = 0.0
    """coefficient of the entropy"""
    vf_coef: float = 0.5
    """coefficient of the value function"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""
    # PORT: annotation `float = None` -> `float | None = None` (same default; valid typing).
    target_kl: float | None = None
    """the target KL divergence threshold"""

    # to be filled in runtime
    batch_size: int = 0
    """the batch size (computed in runtime)"""
    minibatch_size: int = 0
    """the mini-batch size (computed in runtime)"""
    num_iterations: int = 0
    """the number of iterations (computed in runtime)"""


# PORT: `capture_video` / `run_name` parameters and the RecordVideo branch are dropped.
def make_env(env_id, idx, gamma):
    def thunk():
        env = gym.make(env_id)
        env = gym.wrappers.FlattenObservation(env)  # deal with dm_control's Dict observation space
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env = gym.wrappers.ClipAction(env)
        env = gym.wrappers.NormalizeObservation(env)
        # PORT: gymnasium 1.x TransformObservation requires an `observation_space` argument; the
        # clip does not change shape/dtype, so the wrapped env's space is passed through.
        env = gym.wrappers.TransformObservation(
            env, lambda obs: np.clip(obs, -10, 10), env.observation_space
        )
        env = gym.wrappers.NormalizeReward(env, gamma=gamma)
        env = gym.wrappers.TransformReward(env, lambda reward: np.clip(reward, -10, 10))
        return env

    return thunk


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):  # noqa: B008 (CleanRL's signature)
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, envs):
        super().__init__()
        self.critic = nn.Sequential(
            layer_init(nn.Linear(np.array(envs.single_observation_space.shape).prod(), 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 1), std=1.0),
        )
        self.actor_mean = nn.Sequential(
            layer_init(nn.Linear(np.array(envs.single_observation_space.shape).prod(), 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, np.prod(envs.single_action_space.shape)), std=0.01),
        )
        self.actor_logstd = nn.Parameter(torch.zeros(1, np.prod(envs.single_action_space.shape)))

    def get_value(self, x):
        return self.critic(x)

    def get_action_and_value(self, x, action=None):
        action_mean = self.actor_mean(x)
        action_logstd = self.actor_logstd.expand_as(action_mean)
        action_std = torch.exp(action_logstd)
        probs = Normal(action_mean, action_std)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action).sum(1), probs.entropy().sum(1), self.critic(x)


# PORT: CleanRL's `if __name__ == "__main__":` body is moved into this function so the benchmark
# can call it in-process; the body is otherwise CleanRL's, line for line.
def train(args: Args) -> dict:
    args.batch_size = int(args.num_envs * args.num_steps)
    args.minibatch_size = int(args.batch_size // args.num_minibatches)
    args.num_iterations = args.total_timesteps // args.batch_size
    # PORT: W&B init and the TensorBoard SummaryWriter (+ hyperparameter text) are dropped.

    # PORT: benchmark addition: optional thread count, restored on exit (same-process comparison).
    prev_threads = torch.get_num_threads()
    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
    try:
        return _train(args)
    finally:
        torch.set_num_threads(prev_threads)


def _train(args: Args) -> dict:
    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic

    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # env setup
    # PORT: gymnasium 1.x SyncVectorEnv defaults to NEXT_STEP autoreset (the step after an
    # episode end is a dummy reset transition), which CleanRL's loop does not handle; SAME_STEP
    # restores the gym 0.26 / gymnasium 0.29 same-step autoreset semantics it was written for.
    envs = gym.vector.SyncVectorEnv(
        [make_env(args.env_id, i, args.gamma) for i in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    assert isinstance(envs.single_action_space, gym.spaces.Box), (
        "only continuous action space is supported"
    )

    agent = Agent(envs).to(device)
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)

    # ALGO Logic: Storage setup
    obs = torch.zeros((args.num_steps, args.num_envs) + envs.single_observation_space.shape).to(
        device
    )
    actions = torch.zeros((args.num_steps, args.num_envs) + envs.single_action_space.shape).to(
        device
    )
    logprobs = torch.zeros((args.num_steps, args.num_envs)).to(device)
    rewards = torch.zeros((args.num_steps, args.num_envs)).to(device)
    dones = torch.zeros((args.num_steps, args.num_envs)).to(device)
    values = torch.zeros((args.num_steps, args.num_envs)).to(device)

    # PORT: what CleanRL writes to TensorBoard is collected into lists and returned instead.
    episodes: list[tuple[int, float, int]] = []
    iteration_stats: list[dict] = []

    # TRY NOT TO MODIFY: start the game
    global_step = 0
    start_time = time.time()
    next_obs, _ = envs.reset(seed=args.seed)
    next_obs = torch.Tensor(next_obs).to(device)
    next_done = torch.zeros(args.num_envs).to(device)

    for iteration in range(1, args.num_iterations + 1):
        # Annealing the rate if instructed to do so.
        if args.anneal_lr:
            frac = 1.0 - (iteration - 1.0) / args.num_iterations
            lrnow = frac * args.learning_rate
            optimizer.param_groups[0]["lr"] = lrnow

        for step in range(0, args.num_steps):
            global_step += args.num_envs
            obs[step] = next_obs
            dones[step] = next_done

            # ALGO LOGIC: action logic
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
                values[step] = value.flatten()
            actions[step] = action
            logprobs[step] = logprob

            # TRY NOT TO MODIFY: execute the game and log data.
            next_obs, reward, terminations, truncations, infos = envs.step(action.cpu().numpy())
            next_done = np.logical_or(terminations, truncations)
            rewards[step] = torch.tensor(reward).to(device).view(-1)
            next_obs, next_done = (
                torch.Tensor(next_obs).to(device),
                torch.Tensor(next_done).to(device),
            )

            # gymnasium 1.x with SAME_STEP autoreset: the finished episode's info (including
            # RecordEpisodeStatistics' "episode" dict and its "_episode" mask) is under
            # infos["final_info"]; infos itself holds the reset info of the new episode.
            if "final_info" in infos:
                episodes_over = np.nonzero(infos["final_info"]["_episode"])[0]
                episodic_returns = infos["final_info"]["episode"]["r"][episodes_over]
                episodic_lengths = infos["final_info"]["episode"]["l"][episodes_over]
                # PORT: `strict=True` added only to satisfy the linter (B905); lengths are equal.
                for episodic_return, episodic_length in zip(
                    episodic_returns, episodic_lengths, strict=True
                ):
                    print(f"global_step={global_step}, episodic_return={episodic_return}")
                    # PORT: writer.add_scalar(...) -> list append.
                    episodes.append((global_step, float(episodic_return), int(episodic_length)))

        # bootstrap value if not done
        with torch.no_grad():
            next_value = agent.get_value(next_obs).reshape(1, -1)
            advantages = torch.zeros_like(rewards).to(device)
            lastgaelam = 0
            for t in reversed(range(args.num_steps)):
                if t == args.num_steps - 1:
                    nextnonterminal = 1.0 - next_done
                    nextvalues = next_value
                else:
                    nextnonterminal = 1.0 - dones[t + 1]
                    nextvalues = values[t + 1]
                delta = rewards[t] + args.gamma * nextvalues * nextnonterminal - values[t]
                advantages[t] = lastgaelam = (
                    delta + args.gamma * args.gae_lambda * nextnonterminal * lastgaelam
                )
            returns = advantages + values

        # flatten the batch
        b_obs = obs.reshape((-1,) + envs.single_observation_space.shape)
        b_logprobs = logprobs.reshape(-1)
        b_actions = actions.reshape((-1,) + envs.single_action_space.shape)
        b_advantages = advantages.reshape(-1)
        b_returns = returns.reshape(-1)
        b_values = values.reshape(-1)

        # Optimizing the policy and value network
        b_inds = np.arange(args.batch_size)
        clipfracs = []
        for _epoch in range(args.update_epochs):
            np.random.shuffle(b_inds)
            for start in range(0, args.batch_size, args.minibatch_size):
                end = start + args.minibatch_size
                mb_inds = b_inds[start:end]

                _, newlogprob, entropy, newvalue = agent.get_action_and_value(
                    b_obs[mb_inds], b_actions[mb_inds]
                )
                logratio = newlogprob - b_logprobs[mb_inds]
                ratio = logratio.exp()

                with torch.no_grad():
                    # calculate approx_kl http://joschu.net/blog/kl-approx.html
                    old_approx_kl = (-logratio).mean()
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfracs += [((ratio - 1.0).abs() > args.clip_coef).float().mean().item()]

                mb_advantages = b_advantages[mb_inds]
                if args.norm_adv:
                    mb_advantages = (mb_advantages - mb_advantages.mean()) / (
                        mb_advantages.std() + 1e-8
                    )

                # Policy loss
                pg_loss1 = -mb_advantages * ratio
                pg_loss2 = -mb_advantages * torch.clamp(
                    ratio, 1 - args.clip_coef, 1 + args.clip_coef
                )
                pg_loss = torch.max(pg_loss1, pg_loss2).mean()

                # Value loss
                newvalue = newvalue.view(-1)
                if args.clip_vloss:
                    v_loss_unclipped = (newvalue - b_returns[mb_inds]) ** 2
                    v_clipped = b_values[mb_inds] + torch.clamp(
                        newvalue - b_values[mb_inds],
                        -args.clip_coef,
                        args.clip_coef,
                    )
                    v_loss_clipped = (v_clipped - b_returns[mb_inds]) ** 2
                    v_loss_max = torch.max(v_loss_unclipped, v_loss_clipped)
                    v_loss = 0.5 * v_loss_max.mean()
                else:
                    v_loss = 0.5 * ((newvalue - b_returns[mb_inds]) ** 2).mean()

                entropy_loss = entropy.mean()
                loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef

                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()

            if args.target_kl is not None and approx_kl > args.target_kl:
                break

        y_pred, y_true = b_values.cpu().numpy(), b_returns.cpu().numpy()
        var_y = np.var(y_true)
        explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y

        # TRY NOT TO MODIFY: record rewards for plotting purposes
        # PORT: the writer.add_scalar(...) calls become one dict per iteration (same values,
        # same `.item()` calls).
        sps = int(global_step / (time.time() - start_time))
        iteration_stats.append(
            {
                "global_step": global_step,
                "learning_rate": optimizer.param_groups[0]["lr"],
                "value_loss": v_loss.item(),
                "policy_loss": pg_loss.item(),
                "entropy": entropy_loss.item(),
                "old_approx_kl": old_approx_kl.item(),
                "approx_kl": approx_kl.item(),
                "clipfrac": np.mean(clipfracs),
                "explained_variance": explained_var,
                "SPS": sps,
            }
        )
        print("SPS:", sps)

    # PORT: benchmark result (CleanRL's own SPS measure, global_step / elapsed, over the whole run).
    elapsed = time.time() - start_time
    envs.close()
    last = [r for _, r, _ in episodes[-10:]]
    return {
        "sps": global_step / elapsed if global_step else float("nan"),
        "episodes": episodes,
        "final_mean_return": float(np.mean(last)) if last else float("nan"),
        "iterations": iteration_stats,
        "global_step": global_step,
        "elapsed_s": elapsed,
    }


def run_cleanrl_ppo(
    env_id: str = "HalfCheetah-v5",
    total_timesteps: int = 20480,
    seed: int = 1,
    num_envs: int = 1,
    torch_threads: int | None = None,
) -> dict:
    """Run CleanRL's PPO (all other hyperparameters at CleanRL's defaults).

    Returns {"sps": env steps/s over the whole run (global_step / elapsed, CleanRL's measure),
    "episodes": [(global_step, episodic_return, episodic_length), ...],
    "final_mean_return": mean return of the last 10 episodes (NaN if none),
    "iterations": per-iteration stats CleanRL logs to TensorBoard,
    "global_step": env steps taken, "elapsed_s": wall time of the run}.
    Note: like CleanRL it seeds the global `random`, numpy and torch RNGs.
    """
    args = Args(
        env_id=env_id,
        total_timesteps=total_timesteps,
        seed=seed,
        num_envs=num_envs,
        torch_threads=torch_threads,
    )
    return train(args)


if __name__ == "__main__":
    args = tyro.cli(Args)
    result = train(args)
    print(f"SPS (whole run): {result['sps']:.1f}")
    print(f"episodes: {len(result['episodes'])}")
    for global_step, episodic_return, episodic_length in result["episodes"]:
        print(f"  global_step={global_step} return={episodic_return:.2f} length={episodic_length}")
    print(f"final_mean_return (last 10): {result['final_mean_return']:.2f}")
