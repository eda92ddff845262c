"""The lab tests say what is still stood in (tests/lab/test_provision_lab.py: STAND_INS)."""

from __future__ import annotations


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    ran = [r for key in ("passed", "failed", "error") for r in terminalreporter.stats.get(key, [])]
    if not any("tests/lab/test_provision_lab.py" in getattr(r, "nodeid", "") for r in ran):
        return
    from tests.lab.test_provision_lab import STAND_INS

    terminalreporter.section("still stood in on the real-Kubernetes lab")
    for what, why in STAND_INS.items():
        terminalreporter.write_line(f"{what}: {why}")
    from tests.lab import mirror

    terminalreporter.section("the lab's images: real (built here) or stand-in")
    for ref, kind, source in mirror.image_table():
        terminalreporter.write_line(f"{ref:<62} {kind:<9} {source}")
