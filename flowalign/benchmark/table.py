"""The benchmark's printed table: (metric, value, unit) rows from ``run_benchmark``'s result."""

from __future__ import annotations


def table_rows(result: dict) -> list[tuple[str, str, str]]:
    r, env = result["results"], result["environment"]
    rows: list[tuple[str, str, str]] = []

    def add(metric: str, value, unit: str = "", fmt: str = "{:.3g}") -> None:
        if value is None:
            return
        rows.append((metric, fmt.format(value) if isinstance(value, float) else str(value), unit))

    roll, train, flops = r["rollout"], r["train"], r["flops"]
    geometry = env["geometry"]
    frames = f"×{geometry['num_frames']}f" if geometry.get("num_frames") else ""
    add("model", result["model"])
    add("device", f"{env['device_name']} ({env['device']}, {env['dtype']})")
    add("shape", f"{geometry['height']}×{geometry['width']}{frames} px, latent {tuple(env['latent_shape'])}, "
        f"{env['text_tokens']} text tokens")
    add("transformer params", env["transformer_params"] / 1e6, "M", "{:.4g}")
    add("LoRA params", env["lora_params"] / 1e6, "M")
    add("rollout", roll["images_per_s"], "images/s")
    add("rollout batch", f"{roll['images']} samples × {result['config']['steps']} steps, {roll['rows']} rows",
        "")
    add("rollout time", roll["seconds"], "s")
    add("training (fwd+bwd)", train["pairs_per_s"], "pairs/s")
    add("training batch", f"{train['pairs']} pairs, micro-batch {result['config']['micro_batch_size']}, "
        f"{train['rows']} rows")
    add("transformer forward", flops["forward_per_row"] / 1e9, "GFLOP/row")
    add("transformer fwd+bwd", flops["forward_backward_per_row"] / 1e9, "GFLOP/row")
    add("rollout throughput", flops["rollout_tflops_per_s"], "TFLOP/s")
    add("training throughput", flops["train_tflops_per_s"], "TFLOP/s")
    if flops["peak_tflops"]:
        add("rollout MFU", 100 * flops["rollout_mfu"], f"% of {flops['peak_tflops']:g} TFLOP/s", "{:.1f}")
        add("training MFU", 100 * flops["train_mfu"], f"% of {flops['peak_tflops']:g} TFLOP/s", "{:.1f}")
    sp = r["shared_prefix"]
    add("shared prefix", f"{sp['rows_shared']} vs {sp['rows_without']} rows/rollout "
        f"(window {sp['window_start']}+{sp['window_size']})", "")
    add("shared prefix saving", 100 * sp["saving"], "% rows", "{:.1f}")
    it = r.get("iteration")
    if it:
        add("RL iteration", it["seconds"], "s/iteration")
        add("  iteration rollout", it.get("speed/rollout_images_per_s"), "images/s")
        add("  iteration training", it.get("speed/train_pairs_per_s"), "pairs/s")
        add("  iteration pairs", it.get("train/pairs"), "pairs", "{:.0f}")
        if it["skipped"]:
            add("  skipped updates", it["skipped"], "")
    mem = "GiB (torch max allocated)" if env["device"].startswith("cuda") else "GiB (process peak RSS)"
    add("peak memory rollout", r["memory_rollout_gib"], mem)
    add("peak memory training", r["memory_train_gib"], mem)
    add("peak memory iteration", r.get("memory_iteration_gib"), mem)
    return rows


def format_table(result: dict) -> str:
    rows = [("metric", "value", "unit"), *table_rows(result)]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    notes = [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines + notes)
