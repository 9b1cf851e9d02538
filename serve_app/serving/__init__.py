"""The Ray Serve side: the model deployment, its batching queue, metrics and settings."""
