"""Blob store (local directory or s3://) for model files, datasets and checkpoints."""
from fireplace.storage.blobs import BlobInfo, BlobStore, blob_key, safe_filename

__all__ = ["BlobInfo", "BlobStore", "blob_key", "safe_filename"]
