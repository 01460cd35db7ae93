"""One run: the request and its plan (identity), the session on this machine, evaluation, the feature cache,
the record document, and the runner that ties them to the store."""
