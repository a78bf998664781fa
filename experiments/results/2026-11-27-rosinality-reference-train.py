# Diagnostic (stop 6 of issue 10): trains rosinality/stylegan2-pytorch's own `model.py` on
# Plume's synthetic birds with the regime of experiments/jobs/generator-cpu.yaml (batch 16,
# lr 0.0025 with lazy-R1 Adam scaling, R1 gamma 5 every 16 steps, x-flips, DiffAugment-style
# translation 1/8 + cutout 1/2 on every D input, style mixing 0.9, EMA half-life 5000 images),
# in a loop that follows that project's train.py, to tell a Plume bug from a regime problem.
#
# Set-up (nothing of rosinality's is in this repository):
#   fetch rosinality/stylegan2-pytorch at bef283a; copy model.py, op/, distributed.py,
#   non_leaking.py into a directory; in op/fused_act.py and op/upfirdn2d.py replace the
#   `load(...)` of the CUDA extension with None (the CPU paths never call it); in model.py
#   cap every entry of the Generator's and Discriminator's channel tables at 64 (the fixture's
#   config, `CHANNEL_CAP`); put this file beside model.py.
# Run: .venv/bin/python train_ref.py DATASET_DIR OUT_DIR STEPS
# Then: plume-worker import stylegan2 --from rosinality OUT_DIR/g_ema.pt --out ref.safetensors
#       cargo run --release -p plume-worker --example generator_metrics -- ref.safetensors JUDGE DATASET_DIR 1000 grid.png
import sys, os, math, random, time, json
import numpy as np, torch
from torch.nn import functional as F
from PIL import Image
sys.path.insert(0, os.path.dirname(__file__))
import model as M

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
DATA = sys.argv[1]; OUT = sys.argv[2]; STEPS = int(sys.argv[3])
AUG = os.environ.get("AUG", "1") == "1"
GAMMA = float(os.environ.get("GAMMA", "5")); LR = float(os.environ.get("LR", "0.0025"))
B = 16; os.makedirs(OUT, exist_ok=True)
torch.manual_seed(1); random.seed(1)

split = dict(l.split() for l in open(f"{DATA}/train_test_split.txt"))
paths = [l.split() for l in open(f"{DATA}/images.txt")]
imgs = [np.asarray(Image.open(f"{DATA}/images/{p}").convert("RGB")) for i, p in paths if split[i] == "1"]
X = torch.tensor(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1
print("train images", X.shape, flush=True)

g = M.Generator(32, 128, 2, channel_multiplier=2, lr_mlp=0.01)
d = M.Discriminator(32, channel_multiplier=2)
g_ema = M.Generator(32, 128, 2, channel_multiplier=2, lr_mlp=0.01); g_ema.eval()
g_ema.load_state_dict(g.state_dict())
r = 16 / 17
g_opt = torch.optim.Adam(g.parameters(), lr=LR, betas=(0.0, 0.99))
d_opt = torch.optim.Adam(d.parameters(), lr=LR * r, betas=(0.0, 0.99 ** r))

def translate(x, ratio=0.125):
    b, c, h, w = x.shape
    s = int(h * ratio + 0.5)
    ty = torch.randint(-s, s + 1, [b, 1, 1]); tx = torch.randint(-s, s + 1, [b, 1, 1])
    gy = (torch.arange(h).view(1, h, 1) + ty + 1).clamp(0, h + 1).expand(b, h, w)
    gx = (torch.arange(w).view(1, 1, w) + tx + 1).clamp(0, w + 1).expand(b, h, w)
    gb = torch.arange(b).view(b, 1, 1).expand(b, h, w)
    p = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)
    return p[gb, gy, gx].permute(0, 3, 1, 2)

def cutout(x, ratio=0.5):
    b, c, h, w = x.shape
    ch = int(h * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), [b, 1, 1]) - ch // 2
    cx = torch.randint(0, w + (1 - ch % 2), [b, 1, 1]) - ch // 2
    yy = torch.arange(h).view(1, h, 1); xx = torch.arange(w).view(1, 1, w)
    m = ((yy >= cy) & (yy < cy + ch) & (xx >= cx) & (xx < cx + ch)).logical_not().float()
    return x * m.unsqueeze(1)

aug = (lambda x: cutout(translate(x))) if AUG else (lambda x: x)

def noises(n):
    if random.random() < 0.9:
        return list(torch.randn(2, n, 128).unbind(0))
    return [torch.randn(n, 128)]

def grid(gen, step):
    torch.manual_seed(20240601)
    z = torch.randn(32, 128)
    with torch.no_grad():
        a, _ = gen([z], randomize_noise=True)
    a = ((a.clamp(-1, 1) + 1) * 127.5).byte().permute(0, 2, 3, 1).numpy()
    rows = [np.concatenate(list(a[i * 8:(i + 1) * 8]), 1) for i in range(4)]
    Image.fromarray(np.concatenate(rows, 0)).resize((8 * 128, 4 * 128), Image.NEAREST).save(f"{OUT}/samples-{step:05d}.png")

half_life = 5000.0
t0 = time.time()
for step in range(STEPS + 1):
    if step % 500 == 0:
        grid(g_ema, step); torch.save(g_ema.state_dict(), f"{OUT}/g_ema.pt")
        print(f"step {step} {time.time() - t0:.0f}s", flush=True)
    if step == STEPS: break
    real = X[torch.randint(0, len(X), (B,))]
    flip = torch.rand(B, 1, 1, 1) < 0.5
    real = torch.where(flip, real.flip(3), real)
    # D
    g.requires_grad_(False); d.requires_grad_(True)
    fake, _ = g(noises(B))
    rp = d(aug(real)); fp = d(aug(fake))
    d_loss = F.softplus(-rp).mean() + F.softplus(fp).mean()
    d.zero_grad(); d_loss.backward(); d_opt.step()
    if step % 16 == 0 and GAMMA > 0:
        real.requires_grad = True
        rp2 = d(aug(real))
        gr, = torch.autograd.grad(rp2.sum(), real, create_graph=True)
        r1 = gr.pow(2).reshape(B, -1).sum(1).mean()
        d.zero_grad(); (GAMMA / 2 * r1 * 16 + 0 * rp2[0]).backward(); d_opt.step()
    # G
    g.requires_grad_(True); d.requires_grad_(False)
    fake, _ = g(noises(B))
    g_loss = F.softplus(-d(aug(fake))).mean()
    g.zero_grad(); g_loss.backward(); g_opt.step()
    beta = 0.5 ** (B / half_life)
    with torch.no_grad():
        for pe, p in zip(g_ema.parameters(), g.parameters()):
            pe.copy_(p.lerp(pe, beta))
    if step % 100 == 0:
        print(f"step {step} d {d_loss.item():.3f} g {g_loss.item():.3f} gap {(rp.mean() - fp.mean()).item():.2f}", flush=True)
