"""Layer L6: joining a launched session — :func:`connect_from_env`.

This is the ``connect`` plugin that :func:`crypten_lite.init` calls inside a process started by
``crypten-lite launch`` or :func:`crypten_lite.launch`:

1. read the session from the environment (:class:`~crypten_lite.launcher.session.ProcessEnv`);
2. give torch this process's share of the host's cores;
3. bind this rank's receiving socket (IPC: in the launcher's private directory; TCP: a random
   port on this host's address, CurveZMQ keys derived from the session secret);
4. rendezvous: report the address to the coordinator and receive every rank's address;
5. connect to every other rank and return the :class:`ZmqCommunicator`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from crypten_lite.config import Config, config_from_env
from crypten_lite.errors import ConfigurationError
from crypten_lite.launcher.rendezvous import advertise_host, rendezvous
from crypten_lite.launcher.security import Security
from crypten_lite.launcher.session import ProcessEnv, intra_op_threads
from crypten_lite.launcher.zmq_comm import ZmqCommunicator
from crypten_lite.runtime.comm import Communicator

__all__ = ["connect", "connect_from_env"]


def connect(process: ProcessEnv, config: Config) -> ZmqCommunicator:
    """Bind, rendezvous and connect this process as described in the module docstring.

    Raises:
        ConfigurationError: the transport cannot be used with this environment.
        AuthenticationError, PartyTimeoutError, LaunchError: the rendezvous failed.
    """
    if config.transport == "ipc":
        if process.run_dir is None:
            raise ConfigurationError(
                "transport 'ipc' needs the launcher's private directory (CRYPTEN_LITE_RUN_DIR); "
                "across hosts use --transport tcp"
            )
        security = Security(None, process.world_size)
        bind = f"ipc://{process.run_dir}/rank-{process.rank}"
    elif config.transport == "tcp":
        security = Security(process.load_secret(), process.world_size)
        host = process.host or advertise_host(process.coordinator)
        bind = f"tcp://{host}:*"
    else:
        raise ConfigurationError(
            f"transport {config.transport!r} cannot connect processes; use 'ipc' or 'tcp'"
        )
    comm = ZmqCommunicator(
        process.rank,
        process.world_size,
        bind=bind,
        security=security,
        timeout_s=config.timeout_s,
        max_message_bytes=config.max_message_bytes,
        max_queued_bytes=config.queued_bytes_bound,
        has_dealer=process.has_dealer,
    )
    try:
        table = rendezvous(
            coordinator=process.coordinator,
            rank=process.rank,
            world_size=process.world_size,
            has_dealer=process.has_dealer,
            transport=config.transport,
            endpoint=comm.endpoint,
            security=security,
            timeout_s=config.rendezvous_timeout_s,
        )
        comm.connect_peers(table)
    except BaseException:
        comm.abort()
        raise
    return comm


def connect_from_env(
    config: Config | None = None, environ: Mapping[str, str] | None = None
) -> Communicator:
    """The communicator of this launched party (or dealer) process.

    Args:
        config: session settings; read from the ``CRYPTEN_LITE_*`` variables when ``None``.
        environ: the environment to read (``os.environ`` when ``None``).

    Sets torch's intra-op threads to ``max(1, cores // processes on this host)`` unless
    ``CRYPTEN_LITE_NUM_THREADS`` says otherwise, so co-located parties do not oversubscribe.
    """
    process = ProcessEnv.from_env(environ)
    config = config or config_from_env(environ)
    torch.set_num_threads(intra_op_threads(process.local_processes, process.num_threads))
    return connect(process, config)
