"""SunSpec inverter adapter (pysunspec2) against a Modbus TCP DEVICE SIMULATION on
loopback. The register map is built from the SunSpec model definitions (model 1 common,
model 103 three-phase inverter: point order, sizes, scale factors) that pysunspec2 ships;
only Modbus function 3 (read holding registers) is simulated."""

from __future__ import annotations

import socketserver
import struct
import threading
from collections.abc import Iterator

import pytest

from collectors.solar import SolarCollector, SunSpecInverter, SunSpecOptions

pytestmark = pytest.mark.integration

BASE = 40000


def _model_regs(model_id: int, values: dict[str, int]) -> list[int]:
    """Registers of one model from its SunSpec definition, ``values`` by point name."""
    from sunspec2 import device

    mdef = device.get_model_def(model_id)
    regs: list[int] = []
    for p in mdef["group"]["points"]:
        size = p["size"]
        v = values.get(p["name"])
        if p["name"] == "ID":
            v = model_id
        elif p["name"] == "L":
            v = sum(q["size"] for q in mdef["group"]["points"]) - 2
        if p["type"] == "string":
            raw = (v or "").encode() if isinstance(v, str) else b""
            raw = raw.ljust(size * 2, b"\0")
            regs += list(struct.unpack(f">{size}H", raw))
        elif v is None:  # the SunSpec "not implemented" value of the type
            na = {"int16": [0x8000], "sunssf": [0x8000], "int32": [0x8000, 0], "acc32": [0, 0]}
            regs += na.get(p["type"], [0xFFFF] * size)
        else:
            v &= (1 << (16 * size)) - 1
            regs += [(v >> (16 * (size - 1 - i))) & 0xFFFF for i in range(size)]
    return regs


def register_map(w_raw: int, w_sf: int, wh: int) -> dict[int, int]:
    regs = [0x5375, 0x6E53]  # "SunS"
    regs += _model_regs(1, {"Mn": "SimInverter", "Md": "SIMULATION", "SN": "SIM-1"})
    regs += _model_regs(103, {"W": w_raw, "W_SF": w_sf, "WH": wh, "WH_SF": 0, "St": 4})
    regs += [0xFFFF, 0]  # end model
    return {BASE + i: r for i, r in enumerate(regs)}


class ModbusSim(socketserver.BaseRequestHandler):
    regs: dict[int, int] = {}

    def handle(self) -> None:
        while True:
            hdr = self.request.recv(7)
            if len(hdr) < 7:
                return
            tid, pid, length, unit = struct.unpack(">HHHB", hdr)
            pdu = self.request.recv(length - 1)
            fc, addr, count = struct.unpack(">BHH", pdu[:5])
            if fc != 3:
                body = struct.pack(">BB", fc | 0x80, 1)
            elif any(a not in self.regs for a in range(addr, addr + count)):
                body = struct.pack(">BB", fc | 0x80, 2)  # illegal data address
            else:
                vals = [self.regs[a] for a in range(addr, addr + count)]
                body = struct.pack(f">BB{count}H", fc, 2 * count, *vals)
            self.request.sendall(struct.pack(">HHHB", tid, pid, len(body) + 1, unit) + body)


@pytest.fixture()
def sunspec_device() -> Iterator[int]:
    ModbusSim.regs = register_map(w_raw=12345, w_sf=-1, wh=5000)
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), ModbusSim)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_sunspec_inverter_reads_power_and_energy(sunspec_device: int) -> None:
    inv = SunSpecInverter(SunSpecOptions(host="127.0.0.1", port=sunspec_device))
    try:
        w, wh = inv.read_inverter()
        assert w == pytest.approx(1234.5)  # 12345 x 10^-1
        assert wh == pytest.approx(5000.0)
        # the device's lifetime counter drives the published energy counter
        sent: list[dict] = []
        t = [0.0]
        coll = SolarCollector(inv, lambda m, s, **f: sent.append(f), "inv", lambda: t[0])
        coll.tick()
        ModbusSim.regs = register_map(w_raw=10000, w_sf=-1, wh=5010)
        t[0] = 10.0
        coll.tick()
        assert sent[0]["energy_j"] == 0.0
        assert sent[1]["power_w"] == pytest.approx(1000.0)
        assert sent[1]["energy_j"] == pytest.approx(10 * 3600.0)
    finally:
        inv.close()


def test_sunspec_unreachable_device_is_counted_not_fatal() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    inv = SunSpecInverter(SunSpecOptions(host="127.0.0.1", port=port, timeout_s=0.5))
    coll = SolarCollector(inv, lambda *a, **k: None, "inv")
    assert coll.tick() is None
    assert coll.errors == 1
