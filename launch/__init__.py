"""Launchers: XManager (xm_launch.py), SLURM (slurm/), Colab (colab/); see launch/README.md."""
