"""Artifacts: the files attempts store (screenshots, downloads), their bytes content-addressed
per tenant behind ArtifactContent (files in the embedded mode, PostgreSQL in the distributed
one), and the application service that checks, stores, lists and serves them."""

from .files import FileContent
from .interface import ArtifactContent, ContentWriter
from .service import Artifacts, UploadHeader

__all__ = ["ArtifactContent", "Artifacts", "ContentWriter", "FileContent", "UploadHeader"]
