"""The server around the engine: settings, weights on disk, the per-request service, the FIFO
queue predict.py calls, the idle warm-up, output files and logs."""
