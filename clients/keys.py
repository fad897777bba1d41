"""Keys the clients send (docs/security.md): the inference key (`serving up --inference-key-file`),
the admin key (Triton's admin APIs: the repository index, shared memory) and the rule for keys taken
from the environment.

A key given with `--key-file` (or `--admin-key-file`) is the user's explicit choice for this command
and is sent where they said. A key from the environment was set once for every command, so it is
sent only where it cannot be overheard, to loopback or over TLS; elsewhere it is left out with one
warning line (the server then refuses what needed it, with its own clear error).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from clients import ClientError
from clients.endpoints import Endpoint, parse_url
from cnn_deploy_core import paths
from cnn_deploy_core.secrets import SecretFileError, may_send_env_key, read_key_file

API_KEY_ENV = "TRITON_API_KEY"
ADMIN_KEY_ENV = "TRITON_ADMIN_KEY"
API_KEY_HEADER = "api-key"  # serving up's --inference-key-file restricts with this header
ADMIN_KEY_HEADER = "admin-key"  # the header of Triton's admin APIs in every deployment of ours
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"  # Triton's gRPC front end prefixes restricted headers


class KeyRequiredError(ClientError):
    """The server restricts this API with a key, and none (or a wrong one) was sent."""


# Triton's answer to a restricted call without the right header (gRPC sends it as UNAVAILABLE, which
# must not read as "unreachable": retrying or failing over cannot help).
_RESTRICTED = re.compile(r"restricted, expecting header '([^']+)'")
_HOW = {
    API_KEY_HEADER: f"--key-file (or ${API_KEY_ENV})",
    ADMIN_KEY_HEADER: f"--admin-key-file (or ${ADMIN_KEY_ENV})",
}


def restricted_error(message: str, where: object) -> KeyRequiredError | None:
    """A KeyRequiredError naming the option to give, when `message` is Triton refusing a call for
    want of a key (verdict)."""
    found = _RESTRICTED.search(message)
    if not found:
        return None
    header = found.group(1).removeprefix(GRPC_HEADER_PREFIX)
    how = _HOW.get(header, f"the header {header!r}")
    return KeyRequiredError(
        f"the server at {where} requires a key for this (header {header!r}); none or a wrong one was "
        f"sent: give {how}"
    )


def header_name(header: str, protocol: str) -> str:
    return GRPC_HEADER_PREFIX + header if protocol == "grpc" else header


def from_file(path: Path | None, what: str) -> str | None:
    if path is None:
        return None
    try:
        return read_key_file(path, what)
    except SecretFileError as e:
        raise ClientError(str(e)) from None


def unsafe_endpoints(endpoints: Sequence[Endpoint]) -> list[Endpoint]:
    """The endpoints an environment key must not go to: plaintext to another host (verdict)."""
    return [e for e in endpoints if not may_send_env_key(e.host, e.ssl)]


def from_env(variable: str, endpoints: Sequence[Endpoint], warn) -> str | None:
    """$variable, unless an endpoint is plaintext and remote: then None, after one warning line."""
    key = os.environ.get(variable)
    if not key:
        return None
    unsafe = unsafe_endpoints(endpoints)
    if unsafe:
        where = ", ".join(map(str, unsafe))
        warn(
            f"warning: ${variable} not sent: {where} is plaintext to another host "
            "(use grpcs:// or give the key with a key file)"
        )
        return None
    return key


def api_headers(key: str | None, protocol: str) -> dict[str, str] | None:
    """The header (gRPC: metadata) that carries the inference key, or None without a key."""
    return {header_name(API_KEY_HEADER, protocol): key} if key else None


def inference_key(key_file: Path | None, endpoints: Sequence[Endpoint], warn) -> str | None:
    """--key-file's key, else $TRITON_API_KEY where it may go, else None."""
    return from_file(key_file, "key file") or from_env(API_KEY_ENV, endpoints, warn)


def inference_headers(key_file: Path | None, endpoints: Sequence[Endpoint], warn) -> dict[str, str] | None:
    """The inference key's header for these endpoints (--key-file, else $TRITON_API_KEY), or None."""
    return api_headers(inference_key(key_file, endpoints, warn), endpoints[0].protocol)


def add_key_argument(parser) -> None:
    parser.add_argument(
        "--key-file",
        type=Path,
        default=None,
        help="file holding the inference key of a server started with --inference-key-file "
        f"(chmod 600; default: ${API_KEY_ENV}, sent only to loopback or over TLS)",
    )


def local_server_key(endpoint: Endpoint) -> str | None:
    """The admin key of the local server (`serving up`) listening at this endpoint, from the file its
    record names (the record is read as a file: clients do not import serving), else None."""
    try:
        state = json.loads((paths.state_dir() / "server.json").read_text())
    except (OSError, ValueError):
        return None
    replicas = [state, *state.get("replicas", [])]
    mine = {parse_url(r.get(key, "grpc://x:1")) for r in replicas for key in ("grpc_url", "http_url")}
    if endpoint not in mine or not state.get("admin_key_file"):
        return None
    try:  # the record names the key's own private file (serving.local.keep_admin_key)
        return Path(state["admin_key_file"]).read_text().strip() or None
    except OSError:
        return None


def admin_key(key_file: Path | None, endpoints: Sequence[Endpoint], warn) -> str | None:
    """--admin-key-file's key, else $TRITON_ADMIN_KEY where it may go, else the local server's own
    key (when these endpoints are that server), else None."""
    return (
        from_file(key_file, "admin key file")
        or from_env(ADMIN_KEY_ENV, endpoints, warn)
        or local_server_key(endpoints[0])
    )


def admin_headers(key: str | None, protocol: str) -> dict[str, str]:
    """The header (gRPC: metadata) that carries the admin key; empty without a key."""
    return {header_name(ADMIN_KEY_HEADER, protocol): key} if key else {}


def add_admin_key_argument(parser, *, why: str) -> None:
    parser.add_argument(
        "--admin-key-file",
        type=Path,
        default=None,
        help=f"file holding Triton's admin key, {why} (chmod 600; default: ${ADMIN_KEY_ENV}, sent "
        "only to loopback or over TLS, else the key of the local `serving up` at --url)",
    )
