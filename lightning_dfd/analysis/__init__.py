"""The analysis application: ``evaluate``, reader-study ``correlate``, figures, sub-commands.

Nothing here is imported by ``import lightning_dfd``: it needs the ``[analysis]`` extra
(h5py, pandas, matplotlib).
"""
