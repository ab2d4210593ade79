"""parley on Ray Serve (`pip install parley[ray]`): the only package of parley that imports Ray (its `config` and
`server_flags` modules do not, so a config can be checked without it)."""
