"""What sits above the deployments: the app builder (`serve run serve_app.entrypoints.builder:build_app`) and the
`pab` console script. The rest of `serve_app` (config, schemas, errors, store) never imports `deployments`."""
