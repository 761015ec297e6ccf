"""Models the runtime can build offline: tiny random-weight pipelines and the table of embedded models."""
