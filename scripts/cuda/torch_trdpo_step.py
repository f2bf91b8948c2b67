"""The PyTorch side of `scripts/check-cuda.sh`: the workload `goodhart bench device` times,
written with transformers, on the same GPU, so the two are measured side by side.

One TR-DPO step: a random-init fp32 model, 8 pairs of 16 prompt + 48 completion tokens, the
policy's and the reference's completion log-probs, the DPO loss, backward, AdamW (lr 1e-6,
no clipping), then the soft reference update with alpha 0.6. Prints one JSON line per config
and dtype.

`--dtypes bfloat16,float16` runs the forward passes under `torch.autocast`, as transformers'
Trainer does for `bf16=True` / `fp16=True`: float32 master weights and optimizer state, and for
float16 a `GradScaler` (the same mixed precision as Goodhart's `bf16` / `fp16`).

`pythia-1.4b` and `pythia-2.8b` are EleutherAI's shapes (random init on the GPU, nothing is
downloaded). `--gradient-checkpointing` and `--keep-initial` (a third weight copy, as Goodhart's
π_init) make the step the one `goodhart bench scale` times. Peak GPU memory is read as Goodhart
reads it: the device's used memory (cudaMemGetInfo) after the gradients and at the step's end;
PyTorch's own allocator peak is reported beside it. A config that does not fit reports its
out-of-memory error and the next one runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
import torch.nn.functional as F

PAIRS, PROMPT_LEN, COMPLETION_LEN, ALPHA, BETA, LR = 8, 16, 48, 0.6, 0.1, 1e-6

LLAMA = dict(num_key_value_heads=None, tie_word_embeddings=False, rms_norm_eps=1e-6, rope_theta=10000.0)
CONFIGS = {
    "tiny": ("llama", dict(vocab_size=256, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=128, **LLAMA)),
    "small": ("llama", dict(vocab_size=512, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                            num_attention_heads=8, max_position_embeddings=256, **LLAMA)),
    # EleutherAI/pythia-160m's shape.
    "pythia-160m": ("gpt_neox", dict(vocab_size=50304, hidden_size=768, intermediate_size=3072,
                                     num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=2048,
                                     rotary_pct=0.25, rotary_emb_base=10000, layer_norm_eps=1e-5,
                                     use_parallel_residual=True, tie_word_embeddings=False, hidden_act="gelu")),
}
for _name, (_hidden, _layers, _heads) in {"pythia-1.4b": (2048, 24, 16), "pythia-2.8b": (2560, 32, 32)}.items():
    CONFIGS[_name] = ("gpt_neox", dict(CONFIGS["pythia-160m"][1], hidden_size=_hidden, intermediate_size=4 * _hidden,
                                       num_hidden_layers=_layers, num_attention_heads=_heads))


def make_model(name: str):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

    kind, kwargs = CONFIGS[name]
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if kind == "llama":
        kwargs["num_key_value_heads"] = kwargs["num_attention_heads"]
        cfg, cls = LlamaConfig(**kwargs), LlamaForCausalLM
    else:
        cfg, cls = GPTNeoXConfig(**kwargs), GPTNeoXForCausalLM
    cfg.use_cache = False
    torch.manual_seed(0)
    if name in ("pythia-1.4b", "pythia-2.8b"):
        # Billions of parameters: initialise on the GPU itself.
        with torch.device("cuda"):
            return cls(cfg).to(torch.float32)
    return cls(cfg).to(torch.float32)


def completion_logps(model, input_ids):
    logits = model(input_ids=input_ids, use_cache=False).logits[:, PROMPT_LEN - 1 : -1, :]
    labels = input_ids[:, PROMPT_LEN:]
    return torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1).sum(-1)


def used_gpu_bytes(device: str):
    if not device.startswith("cuda"):
        return None
    free, total = torch.cuda.mem_get_info()
    return total - free


def bench(name: str, dtype: str, warmup: int, steps: int, device: str, checkpointing: bool, keep_initial: bool) -> dict:
    half = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    autocast = lambda: torch.autocast(device.split(":")[0], dtype=half, enabled=half is not None)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=half is torch.float16)
    policy = make_model(name).to(device).train()
    if checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    initial = copy.deepcopy(policy).eval() if keep_initial else None
    reference = copy.deepcopy(policy).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=LR, weight_decay=0.0)
    vocab = policy.config.vocab_size
    g = torch.Generator().manual_seed(0)
    rp, pp = list(reference.parameters()), list(policy.parameters())
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times, losses, peak = [], [], 0
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        prompt = torch.randint(0, vocab, (PAIRS, PROMPT_LEN), generator=g)
        chosen = torch.randint(0, vocab, (PAIRS, COMPLETION_LEN), generator=g)
        rejected = torch.randint(0, vocab, (PAIRS, COMPLETION_LEN), generator=g)
        ids = torch.cat([torch.cat([prompt, chosen], 1), torch.cat([prompt, rejected], 1)], 0).to(device)
        sync()
        t0 = time.perf_counter()
        with autocast():
            pol = completion_logps(policy, ids)
            with torch.no_grad():
                ref = completion_logps(reference, ids)
        pc, pr = pol.float().chunk(2)
        rc, rr = ref.float().chunk(2)
        loss = -F.logsigmoid(BETA * ((pc - rc) - (pr - rr))).mean()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        peak = max(peak, used_gpu_bytes(device) or 0)
        scaler.step(opt)
        scaler.update()
        with torch.no_grad():
            torch._foreach_mul_(rp, 1.0 - ALPHA)
            torch._foreach_add_(rp, pp, alpha=ALPHA)
        sync()
        t1 = time.perf_counter()
        peak = max(peak, used_gpu_bytes(device) or 0)
        losses.append(loss.item())
        if i >= warmup:
            times.append((t1 - t0) * 1e3)
    n_params = sum(p.numel() for p in policy.parameters())
    median_ms = statistics.median(times)
    tokens = 2 * PAIRS * (PROMPT_LEN + COMPLETION_LEN)
    del initial
    return dict(config=name, dtype=dtype, n_params=n_params, device=torch.cuda.get_device_name() if device.startswith("cuda") else device, torch=torch.__version__,
                gradient_checkpointing=checkpointing, keep_initial=keep_initial,
                median_ms=median_ms, min_ms=min(times), max_ms=max(times), steps=steps, tokens_per_s=tokens / median_ms * 1e3,
                peak_gpu_bytes=peak or None,
                torch_max_allocated_bytes=torch.cuda.max_memory_allocated() if device.startswith("cuda") else None,
                first_loss=losses[0], last_loss=losses[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="tiny,small,pythia-160m")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtypes", default="float32")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--keep-initial", action="store_true", help="hold a third weight copy, as Goodhart's pi_init")
    args = ap.parse_args()
    for name in args.configs.split(","):
        for dtype in args.dtypes.split(","):
            try:
                result = bench(name, dtype, args.warmup, args.steps, args.device, args.gradient_checkpointing, args.keep_initial)
            except torch.OutOfMemoryError as e:
                result = dict(config=name, dtype=dtype, error="out of memory", detail=str(e).splitlines()[0])
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
