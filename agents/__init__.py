"""Learners (one file each, read top to bottom) and the parts they share: networks that
return their hidden features, and the run logger."""
