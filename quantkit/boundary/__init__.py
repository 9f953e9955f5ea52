"""The input/output boundary: every path, file, number and name that comes from the user passes here.

The rules live in one place:

- ``paths``: a path argument is checked before the OS sees it (no NUL byte, no component over 255
  bytes, no path over 4,096 bytes); a file is read only if it is a regular file (a FIFO, a device
  or a folder is named as such, never "no such file"), and files of a model folder only inside it
  (``inside``: names that escape with ``..``, absolute names, and symlinks whose target leaves the
  folder are refused; a Hugging Face cache snapshot may point into its own ``blobs/``).
- ``data``: JSON and YAML are read with a size cap checked *before* the read (config.json, plans,
  recipes: 64 MiB), decoded as UTF-8 with a one-line error, nesting limited (no RecursionError),
  YAML aliases and anchors refused outright (no "billion laughs"), and numbers kept finite.
- ``numbers``: integers from files or options within a range (``1e30`` layers, ``1e20`` group
  sizes fail with the field named, never with an OverflowError).
- ``text``: terminal output with control characters escaped; spreadsheet cells with formula
  triggers neutralised (CSV: a leading ``'``, OWASP's advice) and control characters stripped.
- ``outputs``: outputs created new, or replaced only with ``--force``, atomically; a checkpoint
  folder carries a manifest of the files quantkit wrote, and ``--force`` replaces only a folder
  whose every entry is in it; leftovers of interrupted runs that are provably ours are removed.
- ``weights``: a safetensors header is checked entry by entry (dtype, shape of non-negative ints,
  offsets in bounds, contiguous, no overlaps) before a byte of tensor data is read.

Every refusal is a typed ``quantkit.errors`` exception with a one-line message.
"""
