"""The uploader: a tus 1.0 client (sans-I/O state machine + async httpx driver), bandwidth shaping
and the upload queue policy."""
