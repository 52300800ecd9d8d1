"""A PyTorch model generating on gpu-arena, sleeping and waking.

    pip install ./python                 # from the repository root
    python3 python/examples/sleep_wake.py

Builds a small GPT-2 (random weights: nothing to download) with its weights
in the tag "weights", generates, puts every tag to sleep (weights offloaded
to pinned host memory, everything else discarded), shows the memory back on
the device, wakes, and generates the same tokens again.
"""

import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import gpu_arena  # noqa: E402
import gpu_arena.torch  # noqa: E402

gpu_arena.torch.enable()  # before the first CUDA tensor

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

torch.use_deterministic_algorithms(True)
torch.manual_seed(0)
with gpu_arena.torch.tag("weights"):
    config = GPT2Config(n_layer=6, n_embd=768, n_head=12, vocab_size=32000)
    model = GPT2LMHeadModel(config).to("cuda", torch.float16).eval()


def generate():
    torch.manual_seed(1)
    with torch.no_grad():
        prompt = torch.randint(0, 32000, (2, 64), device="cuda")
        out = model.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=True, top_k=50, pad_token_id=0)
    return out.cpu()


before = generate()
print(gpu_arena.memory_summary())
free_awake = torch.cuda.mem_get_info()[0]
report = gpu_arena.sleep(offload="weights", discard="default")
free_asleep = torch.cuda.mem_get_info()[0]
print(f"asleep: {(free_asleep - free_awake) / 2**20:.0f} MiB back on the device; "
      f"{report['offload']['copied'] / 2**20:.0f} MiB of weights in pinned host memory")
gpu_arena.wake()
after = generate()
print("same tokens after sleep and wake:", torch.equal(before, after))
