"""Sources: what answers a proxy request, online or offline.

- `base`: the `Source` protocol, the `Request` it is asked and the `Answer`s it gives;
- `online`: fetch upstream and record (one `Flight` per key), `offline`: lookups only;
- `documents`: the index documents of every kind that has them (pypi pages, npm
  packuments, Go module lists, Cargo index files), rewritten and, offline, filtered
  to what is stored, by the kind's own rules (`upstreams/`);
- `snapstore` and `githttp`: the snap store API and git smart HTTP;
- `chains`: the one place that wires them for the server and the command line.
"""
