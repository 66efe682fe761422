"""tt-train's side: its msgpack files (ttfile, ttfile_out) and checkpoint directories (ttdir, ttdir_out,
tensorbin, flatbuf), the choice between them (formats), files built from a config (ttbuild), optimizer and
scheduler state (training) and the YAML (ttconfig)."""
