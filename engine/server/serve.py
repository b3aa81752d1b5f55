"""`defectscope engine serve`: the engine process on loopback (default) or, with a token, on the network."""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal
import socket
import threading
import time
from pathlib import Path
from typing import IO

from engine.errors import DefectScopeError
from engine.server import layout


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def load_or_create_token(data_dir: Path, token_file: Path | None) -> tuple[str, Path]:
    """The token from `token_file`; without one, a generated token kept in the data folder (mode 0600)."""
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise DefectScopeError(f"{token_file}: cannot read the token file ({exc.strerror})") from None
        if len(token) < 16:
            raise DefectScopeError(f"{token_file}: token is shorter than 16 characters")
        return token, token_file
    path = layout.token_file(data_dir)
    if path.exists():
        return path.read_text().strip(), path
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token, path


def lock_data_dir(data_dir: Path) -> IO[bytes]:
    """One engine per data folder: a second would mark the first one's running jobs as interrupted."""
    fh = layout.lock_file(data_dir).open("a+b")
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here; one engine per folder is then the user's care
        return fh
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise DefectScopeError(f"{data_dir}: another engine is already serving this data folder") from None
    return fh


def watch_parent(pid: int, every_s: float = 2.0) -> None:
    """Stop (gracefully, stopping its workers too) when the app that started this engine is gone, even if the
    app crashed without stopping it."""
    import psutil

    def alive() -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def watch() -> None:
        while alive():
            time.sleep(every_s)
        print(f"parent process {pid} is gone: stopping", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def serve(
    host: str,
    port: int,
    data_dir: Path,
    token_file: Path | None,
    max_concurrent: int = 1,
    data_roots: list[Path] | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_self_signed: bool = False,
    ray_address: str | None = None,
    ray_token_file: Path | None = None,
    parent_pid: int | None = None,
    upload_cache_gb: float = 50.0,
) -> None:
    import uvicorn

    from engine.server.api import Engine, create_app

    if not is_loopback(host) and token_file is None:
        raise DefectScopeError(f"refusing to listen on non-loopback address {host} without --token-file")
    if (tls_cert is None) != (tls_key is None):
        raise DefectScopeError("--tls-cert and --tls-key go together")
    for root in data_roots or []:
        if not root.is_dir():
            raise DefectScopeError(f"--data-root {root}: not a folder")
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_data_dir(data_dir)  # held (open) for the process's life
    token, path = load_or_create_token(data_dir, token_file)
    if tls_self_signed and tls_cert is None:
        from engine.server.tls import self_signed_certificate

        tls_cert, tls_key = self_signed_certificate(layout.tls_dir(data_dir), host)
    ray_token = None
    if ray_token_file is not None:
        if ray_address is None:
            raise DefectScopeError("--ray-token-file needs --ray-address")
        try:
            ray_token = ray_token_file.read_text().strip()
        except OSError as exc:
            raise DefectScopeError(f"{ray_token_file}: cannot read the Ray token file ({exc.strerror})") from None
    if ray_address is not None:
        try:
            import ray  # noqa: F401  (only to fail now, not at the first job)
        except ImportError:
            raise DefectScopeError("--ray-address needs Ray: pip install 'defectscope[cluster]'") from None
    if upload_cache_gb <= 0:
        raise DefectScopeError(f"--upload-cache-gb {upload_cache_gb}: must be more than 0")
    eng = Engine(data_dir, token, max_concurrent, data_roots, ray_address, ray_token,
                 upload_cache_bytes=int(upload_cache_gb * (1 << 30)))
    try:
        socket.getaddrinfo(host, port)
    except OSError as exc:
        raise DefectScopeError(f"cannot listen on {host}:{port} ({exc})") from None
    scheme = "https" if tls_cert else "http"
    print(f"DefectScope engine on {scheme}://{host}:{port} (data {data_dir}, token in {path}"
          + (f", certificate {tls_cert}" if tls_cert else "")
          + (f", jobs on the Ray cluster at {ray_address}" if ray_address else "") + ")", flush=True)
    if eng.interrupted:
        print(f"jobs interrupted by the last shutdown, marked failed: {', '.join(eng.interrupted)}", flush=True)
    if parent_pid is not None:
        watch_parent(parent_pid)
    try:
        uvicorn.run(create_app(eng), host=host, port=port, log_level="warning",
                    ssl_certfile=str(tls_cert) if tls_cert else None, ssl_keyfile=str(tls_key) if tls_key else None)
    finally:
        eng.executor.shutdown()
        lock.close()
