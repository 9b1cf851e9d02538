"""The HTTP layer: ingress deployment, routes, request bodies, errors, auth, JSON."""
