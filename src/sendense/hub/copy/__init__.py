"""Offsite copies of restore points to S3 object storage: targets and their keys,
uploads (compressed, encrypted, object-locked), manifests, and bringing a copied
point back (on this hub, or on a new one rebuilt from the bucket).

It may import `db`, `auth` (the sealed credentials and keys), `repository` (the
layers' files), `retention` (keep-* rules), `tasks` (copies run as tasks) and `nbd`
(qemu-img), and `common`.
"""
