"""Multi-process training with torchrun (gloo on CPU): DDP, split batches, gathered MSAD negatives,
and only rank 0 writing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from tests.servers import free_port

TORCHRUN = str(Path(sys.executable).parent / "torchrun")


def _gather_worker(rank: int, world: int, port: int, q) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from msc_france.xstars.distributed import gather_batch

    x = torch.full((2, 3), float(rank), requires_grad=True)
    g = gather_batch(x)
    (g * torch.arange(g.shape[0], dtype=torch.float32)[:, None]).sum().backward()
    q.put((rank, g.shape[0], g[:, 0].tolist(), x.grad[:, 0].tolist()))
    dist.destroy_process_group()


def _on_two_ranks(worker) -> list:  # noqa: ANN001
    """Run ``worker(rank, 2, port, queue)`` in 2 spawned gloo processes; their results, by rank."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, 2, port, q)) for r in range(2)]
    for p in procs:
        p.start()
    res = sorted(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    return res


def test_msad_negatives_are_gathered_with_gradient() -> None:
    res = _on_two_ranks(_gather_worker)
    assert [r[1] for r in res] == [4, 4]  # each rank sees the global batch
    assert res[0][2] == [0.0, 0.0, 1.0, 1.0]
    # The gradient flows back to each rank's own rows, summed over both ranks' losses (each rank's
    # loss weights row i by i): rank 0 rows 0, 1 -> 2 x [0, 1]; rank 1 rows 2, 3 -> 2 x [2, 3].
    assert res[0][3] == [0.0, 2.0] and res[1][3] == [4.0, 6.0]


def _msad_worker(rank: int, world: int, port: int, q) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from msc_france.xstars.distributed import gather_batch
    from msc_france.xstars.msad import msad_loss

    full = _embeddings()
    rows = slice(3 * rank, 3 * (rank + 1))
    mine = {s: e[rows].clone().requires_grad_() for s, e in full.items()}
    loss = msad_loss({s: gather_batch(e) for s, e in mine.items()}, tau=0.1)
    loss.backward()
    # DDP averages parameter gradients over ranks: the same division here.
    q.put((rank, float(loss), {s: (e.grad / world).tolist() for s, e in mine.items()}))
    dist.destroy_process_group()


def _embeddings() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {s: torch.nn.functional.normalize(torch.randn(6, 5, 8, generator=g), dim=-1) for s in ("s2", "aerial")}


def test_gathered_msad_equals_the_single_process_loss_on_the_whole_batch() -> None:
    """Each of 2 gloo processes holds 3 of 6 places; with the negatives gathered from both, the loss
    and the gradients of each process's rows equal one process's on all 6.
    """
    from msc_france.xstars.msad import msad_loss

    res = _on_two_ranks(_msad_worker)
    full = {s: e.clone().requires_grad_() for s, e in _embeddings().items()}
    want = msad_loss(full, tau=0.1)
    want.backward()
    local = msad_loss({s: e[:3] for s, e in _embeddings().items()}, tau=0.1)
    for rank, loss, grads in res:
        assert loss == pytest.approx(float(want), rel=1e-5)
        for s, gr in grads.items():
            torch.testing.assert_close(torch.tensor(gr), full[s].grad[3 * rank : 3 * (rank + 1)], rtol=1e-4, atol=1e-6)
    assert float(local) != pytest.approx(float(want), rel=1e-3)  # without the gather, fewer negatives


@pytest.mark.timeout(600)
def test_torchrun_two_processes(tiny_store: Path, tmp_path: Path) -> None:
    from tests.helpers import train_config as _cfg

    cfg = _cfg(tiny_store, tmp_path / "ddp", optim__steps=4, run__checkpoint_every=2).model_dump(mode="json")
    cfg["data"]["num_workers"] = 0
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([TORCHRUN, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "msc_france.cli",
                        "pretrain", "--config", str(tmp_path / "ddp.yaml"), "--quiet"],
                       capture_output=True, text=True, env=env, timeout=500)
    assert p.returncode == 0, p.stderr[-2000:]
    run = tmp_path / "ddp"
    assert sorted(f.name for f in (run / "checkpoints").iterdir()) == ["ckpt-000002.pt", "ckpt-000004.pt", "last.pt"]
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]  # one log line per step: rank 0 only
    assert all(r["msad"] > 0 for r in rows)
    assert p.stdout.count("trained steps 0..4") == 2  # both ranks trained
