"""The ``offload run`` command-line client and the local server it starts when no --server is given."""
