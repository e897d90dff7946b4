"""`capsight model ls|pull|rollback`: the cart's model runtime for a field technician.

``ls`` shows what runs (version, sha256, the providers onnxruntime really gave), the last good
model, the channel and what is installed; ``pull`` polls the registry once, now (verified through
TUF, self-tested, swapped); ``rollback`` goes back to the last good model. Each works on the data
folder a ``capsight run`` uses; a running cart picks the change up at its next start.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from capsight_edge.cli.common import EXIT_FAIL, EXIT_OK, add_device_options, profile_from
from capsight_edge.errors import ModelRejected
from capsight_edge.records import ModelRecord, emit


def register(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("model", help="the cart's model: what runs, pull now, roll back")
    msub = m.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    for name, text in (
        ("ls", "what runs, the last good model, the channel, what is installed"),
        ("pull", "poll the model registry once, now (verified, self-tested, swapped)"),
        ("rollback", "go back to the last good model"),
    ):
        p = msub.add_parser(name, help=text)
        add_device_options(p)
        p.set_defaults(handler=run, action=name)


def _record(rt: Any, pull: str | None = None, detail: str | None = None) -> ModelRecord:
    cur = rt.current or {}
    good = rt._state.get("last_good") or {}
    return ModelRecord(
        running=rt.version or None,
        sha256=cur.get("sha256"),
        providers=cur.get("providers", []),
        last_good=f"{good['name']}:{good['version']}" if good else None,
        channel=rt.channel,
        registry_url=rt.registry_url,
        installed=[f"{m['name']}:{m['version']}" for m in rt.installed()],
        rejected=len(rt._state.get("rejected", [])),
        pull=pull,
        detail=detail,
    )


def run(args: argparse.Namespace) -> int:
    from capsight_edge.runtime.models import runtime_from_profile

    profile = profile_from(args)
    data = Path(os.path.expanduser(profile.storage.data_dir))
    rt = runtime_from_profile(profile, data)
    code, pull, detail = EXIT_OK, None, None
    if args.action == "pull":
        try:
            result = rt.pull()
            pull, detail = result.status, result.detail or None
        except ModelRejected as exc:
            code, pull, detail = EXIT_FAIL, "refused", str(exc)
    elif args.action == "rollback" and not rt.rollback("asked for by a technician"):
        code, detail = EXIT_FAIL, "no other good model to go back to"
    record = _record(rt, pull, detail)
    if args.json:
        emit(record)
    else:
        print(f"running: {record.running or 'no model'} on {', '.join(record.providers) or '-'}")
        print(
            f"last good: {record.last_good or '-'}; channel {record.channel} at "
            f"{record.registry_url or '(no registry)'}"
        )
        print(
            f"installed: {', '.join(record.installed) or '-'}; rolled back here: {record.rejected}"
        )
        if pull or detail:
            print(f"{args.action}: {pull or ''} {detail or ''}".strip())
    return code
