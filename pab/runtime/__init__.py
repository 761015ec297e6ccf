"""The runtime around the PAB algorithm: request parameters (`request`), pipelines and the generator (`pipelines`),
the embedded models (`models`, `tinyvideo`), video encoding (`video`) and the quality tools (`tools`).

Imports run one way: `pab` core (config, presets, adapters, hooks, stats, parallel) <- this package <- serving
(`deployments`, `serve_app`). Nothing here imports ray or the serving packages.
"""
