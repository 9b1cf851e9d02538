"""The deployments' names, alone: what a client needs to find them (`serve.get_deployment_handle(MODEL_DEPLOYMENT,
app_name=...)`) without importing the model deployment, whose module pulls torch (the offline job's driver and
its light `--serve-app` actors import only this). `deployments.py` re-exports them where they always were."""

MODEL_DEPLOYMENT = "EmbeddingModel"
INGRESS_DEPLOYMENT = "Ingress"
