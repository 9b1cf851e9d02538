"""The Ray Serve side: the model deployment (`model`, a thin adapter over `flow`, `coalescer`, `runner`,
`admission`, `health`, `metrics`), its handle API (`schemas`), autoscaling policy and request router, the
typed settings of the whole service (`config`) and every deployment default (`deployments`)."""
