"""``[audit]``: where the node's audit log goes (see :mod:`fednode._federation._audit`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import attrs

from ._config_load import FilePath


@attrs.frozen
class AuditConfig:
    """The audit log (``[audit]``).

    Attributes:
        path: the JSON-lines file one line per request is appended to (relative to the configuration
            file's folder; created 0600; reopened on reload, e.g. SIGHUP after logrotate moved it).
            None: no audit log.
    """

    path: Annotated[Path, FilePath()] | None = None
