"""How far do teacher capacity, training length and input resolution move few-shot Recall@1 on
real photos? A GPU experiment, with the pipeline's own data preparation and episode code.

PillTrack trains on 2 CPU cores; this script asks what 10x the training, a 4x deeper network
and twice the input side would buy, on a GPU. The device machines lent to this project have
PyTorch and no TensorFlow, so the networks here are torchvision ResNets trained with a
multi-similarity loss (TF-Similarity's constants: alpha 2, beta 40, lambda 0.5, epsilon 0.1),
class-balanced batches of 4 photos per pill, params.yaml's `augment` colour, exposure, zoom and
square-symmetry changes, an L2-normalised 64-dimension embedding and 4 quarter-turn views per
crop, as the teacher stage has them. Everything else is the pipeline's: `prepare`'s listing,
localisation, cropping and class split (params.yaml, base.seed) of data.source, and
`tf_pilltrack.episodes` on episodes.real_source and on the synthetic novel classes, with
params.yaml's `episodes` settings. Needs PyTorch, torchvision and a CUDA GPU, which are no part of
PillTrack's environments:

    python benchmarks/gpu_ceiling.py --out reports/gpu_ceiling.jsonl     # about 6 minutes, H200

It prints and appends one JSON line per checkpoint: steps, seconds, and mean ± std over the
episodes of Recall@1 (K = 1 and 5) and the 5-shot false-accept rate, real and synthetic. The
first run follows the CPU teacher's schedule (45 epochs x 40 batches of 16 pills x 4), to tie
this harness to the pipeline's teacher; the others train longer and larger until --budget.
"""

import argparse
import json
import multiprocessing as mp
import pathlib
import sys
import time
import types

# `edge_runtime`'s package import loads Annoy, which this script never uses and a GPU machine
# may lack.
if "annoy" not in sys.modules:
    try:
        import annoy  # noqa: F401
    except ImportError:
        sys.modules["annoy"] = types.SimpleNamespace(AnnoyIndex=None)
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402

from tf_pilltrack import episodes, preparation  # noqa: E402
from tf_pilltrack import params as P  # noqa: E402

RUNS = [
    # the CPU teacher's schedule (45 epochs x 40 batches of 16 pills x 4): ties this harness to it
    {"name": "resnet10_64_short", "net": "resnet10", "size": 64, "steps": 1800, "classes": 16, "lr": 0.002},
    {"name": "resnet18_64_long", "net": "resnet18", "size": 64, "steps": 10000, "classes": 32, "lr": 0.002,
     "checkpoints": (0.25, 0.5, 1.0)},
    {"name": "resnet18_128_long", "net": "resnet18", "size": 128, "steps": 10000, "classes": 32, "lr": 0.002,
     "checkpoints": (0.25, 0.5, 1.0)},
    {"name": "resnet50_128_long", "net": "resnet50", "size": 128, "steps": 8000, "classes": 32, "lr": 0.001,
     "checkpoints": (0.25, 0.5, 1.0)},
]
T0 = time.time()
params = P.load(str(ROOT / "params.yaml"))
settings = {"budget": 330.0, "out": None, "smoke": False}


def log(record) -> None:
    line = record if isinstance(record, str) else json.dumps(record)
    print(line, flush=True)
    if settings["out"] and not isinstance(record, str):
        with open(settings["out"], "a") as handle:
            handle.write(line + "\n")


IMAGES = GROUPS = CONFIG = None


def _work(chunk):
    return preparation.ingest([IMAGES[i] for i in chunk], GROUPS, CONFIG).crops


def ingest_parallel(images, groups, config):
    global IMAGES, GROUPS, CONFIG
    IMAGES, GROUPS, CONFIG = images, groups, config
    chunks = np.array_split(np.arange(len(images)), 16)
    crops = {}
    with mp.get_context("fork").Pool(16) as pool:
        for part in pool.map(_work, chunks):
            for label, items in part.items():
                crops.setdefault(label, []).extend(items)
    for label in crops:
        crops[label].sort(key=lambda item: item[1])
    return crops


def load(size):
    params["profiles"][params["base"]["profile"]]["image_size"] = size
    config = P.preprocess_config(params)
    images, groups, _ = preparation.list_source(ROOT / params["data"]["source"])
    if settings["smoke"]:
        keep = sorted({i.label for i in images})[:40]
        images = [i for i in images if i.label in keep]
    crops = ingest_parallel(images, groups, config)
    splits, _ = preparation.make_splits(crops, params)
    real, _, _ = episodes.load_real(str(ROOT / params["episodes"]["real_source"]), config,
                                    params["episodes"]["real_localise"])
    return splits, real


def affine_batch(x, zoom):
    """8 symmetries of the square and, for half the images, a random square crop of side 1 - U(0, zoom)."""
    n = x.shape[0]
    dev = x.device
    k = torch.randint(0, 4, (n,), device=dev).float() * (np.pi / 2)
    flip = torch.where(torch.rand(n, device=dev) < 0.5, -1.0, 1.0)
    side = torch.where(torch.rand(n, device=dev) < 0.5, 1.0 - torch.rand(n, device=dev) * zoom,
                       torch.ones(n, device=dev))
    shift = (1.0 - side)
    tx = (torch.rand(n, device=dev) * 2 - 1) * shift
    ty = (torch.rand(n, device=dev) * 2 - 1) * shift
    cos, sin = torch.cos(k), torch.sin(k)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = cos * side * flip
    theta[:, 0, 1] = -sin * side
    theta[:, 1, 0] = sin * side * flip
    theta[:, 1, 1] = cos * side
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def colour_batch(x, a):
    """x in 0..255 float, (N, 3, H, W)."""
    n = x.shape[0]
    dev = x.device

    def u(lo, hi, shape=(n, 1, 1, 1)):
        return lo + (hi - lo) * torch.rand(shape, device=dev)
    x = x + u(-a["brightness"], a["brightness"]) * 255.0
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * u(1 - a["contrast"], 1 + a["contrast"]) + mean
    x = x * u(1 - a["colour_cast"], 1 + a["colour_cast"], (n, 3, 1, 1))
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * u(1 - a["saturation"], 1 + a["saturation"]) + grey
    return x.clamp(0, 255)


def ms_loss(emb, labels, alpha=2.0, beta=40.0, lam=0.5, eps=0.1):
    sim = emb @ emb.t()
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=emb.device)
    pos_mask = same & ~eye
    neg_mask = ~same
    big = 1e4
    max_neg = torch.where(neg_mask, sim, torch.full_like(sim, -big)).max(dim=1, keepdim=True).values
    min_pos = torch.where(pos_mask, sim, torch.full_like(sim, big)).min(dim=1, keepdim=True).values
    pos_keep = pos_mask & (sim - eps < max_neg)
    neg_keep = neg_mask & (sim + eps > min_pos)
    pos_term = torch.log1p((torch.exp(-alpha * (sim - lam)) * pos_keep).sum(1)) / alpha
    neg_term = torch.log1p((torch.exp(beta * (sim - lam)) * neg_keep).sum(1)) / beta
    return (pos_term + neg_term).mean()


def make_net(name, dim):
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
    if name == "resnet10":
        net = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=dim)
    elif name == "resnet18":
        net = torchvision.models.resnet18(num_classes=dim)
    elif name == "resnet34":
        net = torchvision.models.resnet34(num_classes=dim)
    elif name == "resnet50":
        net = ResNet(Bottleneck, [3, 4, 6, 3], num_classes=dim)
    return net


class Embedder(nn.Module):
    def __init__(self, name, dim):
        super().__init__()
        self.net = make_net(name, dim)

    def forward(self, x):  # x (N, 3, H, W) 0..255
        x = x / 127.5 - 1.0
        return F.normalize(self.net(x).float(), dim=1)


@torch.no_grad()
def embed(model, pixels, dev):
    model.eval()
    out = []
    for start in range(0, len(pixels), 512):
        x = torch.from_numpy(pixels[start:start + 512]).to(dev).permute(0, 3, 1, 2).float()
        views = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            e = torch.stack([model(v) for v in views]).mean(0)
        out.append(F.normalize(e, dim=1).cpu().numpy())
    model.train()
    return np.concatenate(out)


def score(model, pool, dev, name):
    emb = embed(model, pool.pixels, dev)
    s = params["episodes"]
    result = {}
    for shots in (1, 5):
        drawn = episodes.draw_episodes(pool.labels, pool.groups, shots, s["absent_classes"], s["views"],
                                       s["count"], s["seed"])
        scored = [episodes.score_episode(emb, pool.labels, e, s["keep_correct"]) for e in drawn]
        summary = episodes.summarise([x["single"] for x in scored])
        result[f"{name}_k{shots}"] = round(summary["recall_at_1"], 4)
        result[f"{name}_k{shots}_std"] = round(summary["recall_at_1_std"], 4)
        if shots == 5:
            result[f"{name}_k5_far"] = round(summary.get("false_accept_rate_episode", float("nan")), 4)
    return result


def train(run, data, dev):
    splits, real = data
    train_split = splits["train"]
    syn_pool = [splits[n] for n in ("references", "queries", "absent_queries")]
    syn = type(train_split)(*(np.concatenate([getattr(p, f) for p in syn_pool]) for f in train_split._fields))
    labels_all = sorted(set(train_split.labels.tolist()))
    index = {label: row for row, label in enumerate(labels_all)}
    y = np.array([index[label] for label in train_split.labels])
    by_class = [np.nonzero(y == c)[0] for c in range(len(labels_all))]
    x_gpu = torch.from_numpy(train_split.pixels).to(dev).permute(0, 3, 1, 2).contiguous()
    model = Embedder(run["net"], 64).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=run["lr"])
    steps = 30 if settings["smoke"] else run["steps"]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=run["lr"], total_steps=steps, pct_start=0.05)
    rng = np.random.default_rng(42)
    P_, K_ = min(run["classes"], len(by_class)), 4
    checkpoints = sorted({max(1, int(steps * f)) for f in run.get("checkpoints", (1.0,))})
    start = time.time()
    results = []
    for step in range(1, steps + 1):
        classes = rng.choice(len(by_class), P_, replace=False)
        idx = np.concatenate([rng.choice(by_class[c], K_, replace=len(by_class[c]) < K_) for c in classes])
        xb = x_gpu[torch.from_numpy(idx).to(dev)].float()
        xb = colour_batch(affine_batch(xb, params["augment"]["zoom"]), params["augment"])
        xb = xb.contiguous(memory_format=torch.channels_last)
        yb = torch.from_numpy(np.repeat(classes, K_)).to(dev)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            emb = model(xb)
        loss = ms_loss(emb.float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        late = time.time() - T0 > settings["budget"]
        if step in checkpoints or late:
            r = {"run": run["name"], "step": step, "seconds": round(time.time() - start, 1),
                 "loss": round(float(loss.detach()), 4)}
            r.update(score(model, real, dev, "real"))
            r.update(score(model, syn, dev, "synthetic"))
            log(r)
            results.append(r)
            if late:
                log(f"budget spent: {run['name']} stopped at step {step}")
                break
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=settings["budget"],
                        help="seconds from the start after which training stops (the run in hand is scored)")
    parser.add_argument("--out", help="JSON lines file the checkpoints are appended to")
    parser.add_argument("--smoke", action="store_true", help="40 pills, 30 steps per run: checks the script")
    parser.add_argument("--runs", nargs="+", choices=[run["name"] for run in RUNS],
                        default=[run["name"] for run in RUNS], help="the runs to train, in this order")
    settings.update(vars(parser.parse_args()))
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    log(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
    data = {}
    for run in (next(run for run in RUNS if run["name"] == name) for name in settings["runs"]):
        if time.time() - T0 > settings["budget"]:
            log(f"budget spent: {run['name']} skipped")
            continue
        if run["size"] not in data:
            started = time.time()
            data[run["size"]] = load(run["size"])
            log(f"data at {run['size']} px: {len(data[run['size']][0]['train'])} training crops, "
                f"{len(data[run['size']][1])} real crops, {time.time() - started:.1f} s")
        train(run, data[run["size"]], dev)
    log(f"total {time.time() - T0:.1f} s")


if __name__ == "__main__":
    main()
