"""Tills of a store find each other with mDNS/DNS-SD (python-zeroconf). Addresses found here
are hints: only tills the ledger lists for our store are kept, and signatures decide who
speaks. Imported lazily: a till without zeroconf uses the configured addresses."""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any

from coupons import cose

if TYPE_CHECKING:
    from sync.peers.service import PeerService

log = logging.getLogger(__name__)
SERVICE_TYPE = "_redeem-peers._udp.local."


class Discovery:
    def __init__(self, service: PeerService) -> None:
        import zeroconf

        self._zc_mod = zeroconf
        self.service = service
        self.configured = set(service.book)
        self.zc = zeroconf.Zeroconf()
        host, port = service.address
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 (what we listen on, not a bind)
            addresses = list(getattr(zeroconf, "get_all_addresses")())  # noqa: B009
        else:
            addresses = [host]
        me = service.me
        self.info = zeroconf.ServiceInfo(
            SERVICE_TYPE,
            f"{me}.{SERVICE_TYPE}",
            addresses=[socket.inet_aton(a) for a in addresses if ":" not in a],
            port=port,
            properties={
                "v": "1",
                "store": service.cfg.store,
                "terminal": me,
                "kid": cose.key_id(service.key.public).hex(),
            },
        )
        self.zc.register_service(self.info)
        self.browser = zeroconf.ServiceBrowser(self.zc, SERVICE_TYPE, handlers=[self._changed])

    def _changed(self, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        if state_change is self._zc_mod.ServiceStateChange.Removed:
            return  # liveness comes from hellos, not from mDNS
        info = zeroconf.get_service_info(service_type, name, timeout=1000)
        if info is None:
            return
        props = {k.decode(): (v or b"").decode() for k, v in (info.properties or {}).items()}
        terminal = props.get("terminal", "")
        svc = self.service
        if props.get("store") != svc.cfg.store or terminal == svc.me:
            return
        if terminal not in svc.members() or terminal in self.configured:
            return  # not a till of ours, or the config names its address
        addresses = info.parsed_addresses()
        if addresses and info.port:
            svc.book[terminal] = (addresses[0], int(info.port))
            log.info("peers: found %s at %s:%d", terminal, addresses[0], info.port)

    def close(self) -> None:
        try:
            self.browser.cancel()
            self.zc.unregister_service(self.info)
        finally:
            self.zc.close()


def start(service: PeerService) -> Discovery | None:
    try:
        return Discovery(service)
    except ImportError:
        log.warning("peers: zeroconf is not installed; using the configured addresses only")
    except OSError as exc:
        log.warning("peers: mDNS discovery is off: %s", exc)
    return None
