//! The `README.md` model card of a converted folder, in the form of the published Unsloth-MLX
//! conversions: base model, what each tensor class became, size against the input, how to
//! use it, the exact command, the inherited license.

use std::fmt::Write;

use crate::convert::{ConvertOptions, ConvertSummary};
use crate::source::Source;

fn gb(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GB", bytes as f64 / 1e9)
    } else {
        format!("{:.1} MB", bytes as f64 / 1e6)
    }
}

/// The `license:` of the input's own model card front matter, if it has one.
fn inherited_license(source: &Source) -> Option<String> {
    let text = std::fs::read_to_string(source.dir.join("README.md")).ok()?;
    let front = text.strip_prefix("---")?.split("\n---").next()?;
    front.lines().find_map(|l| {
        l.trim()
            .strip_prefix("license:")
            .map(|v| v.trim().trim_matches('"').to_string())
    })
}

pub fn model_card(
    source: &Source,
    o: &ConvertOptions,
    s: &ConvertSummary,
    license_files: &[String],
) -> String {
    let base = source
        .config_json
        .get("_name_or_path")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| {
            o.input
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| o.input.display().to_string())
        });
    let license = inherited_license(source);
    let name = o
        .output
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut out = String::new();
    out.push_str("---\nlibrary_name: mlx\npipeline_tag: text-generation\n");
    let _ = writeln!(out, "base_model: {base}");
    if let Some(l) = &license {
        let _ = writeln!(out, "license: {l}");
    }
    out.push_str("tags:\n- mlx\n- mlx-node\n- qwen3_5\n---\n\n");
    let _ = writeln!(out, "# {name}\n");
    let what = match &s.recipe {
        Some(r) => format!("{} quantization", r.name()),
        None => "a full-precision MLX conversion".to_string(),
    };
    let awq = if s.awq_groups.is_empty() {
        String::new()
    } else {
        format!(
            ", after AWQ-style pre-scaling from the importance matrix `{}` ({} groups, inverse \
             scales fused into the preceding norms and projections)",
            o.imatrix
                .as_ref()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
            s.awq_groups.len()
        )
    };
    let _ = writeln!(
        out,
        "{what} of `{base}` for MLX, made with `mlx convert` from `@mlx-node/lm`{awq}. Text \
         model only: the vision tower and the MTP head of the original are not included.\n"
    );
    for w in &s.warnings {
        let _ = writeln!(out, "> **Note:** {w}.\n");
    }
    out.push_str("| | Original | This model |\n|---|---|---|\n");
    let _ = writeln!(
        out,
        "| Size | {} | {} ({:.0} % of the original) |",
        gb(s.input_bytes),
        gb(s.output_bytes),
        100.0 * s.output_bytes as f64 / s.input_bytes.max(1) as f64
    );
    let _ = writeln!(
        out,
        "| Format | SafeTensors | SafeTensors ({}) |",
        if s.files.len() == 1 {
            "single file".to_string()
        } else {
            format!("{} shards", s.files.len())
        }
    );
    let _ = writeln!(out, "| Bits per weight | | {:.2} |\n", s.bits_per_weight);

    out.push_str("| Tensor class | Precision | AWQ | Tensors | Size |\n|---|---|---|---|---|\n");
    for r in &s.rows {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            r.class,
            r.precision,
            if r.awq { "yes" } else { "–" },
            r.tensors,
            gb(r.bytes)
        );
    }
    out.push_str("\n## Use\n\n```js\nimport { loadModel } from '@mlx-node/lm';\n");
    let _ = writeln!(out, "const model = await loadModel('./{name}');");
    out.push_str(
        "const result = await model.chat(\n  [{ role: 'user', content: 'Explain the hybrid \
         attention mechanism in Qwen3.5.' }],\n  { maxNewTokens: 2048, temperature: 0.6, \
         enableThinking: false },\n);\nconsole.log(result.text);\n```\n\n",
    );
    out.push_str("mlx-lm loads it too: `mlx_lm.generate --model ");
    let _ = writeln!(
        out,
        "{name} --prompt \"Hello\"`.\n\n## How it was made\n\n```sh"
    );
    let command = o.command.clone().unwrap_or_else(|| reconstruct_command(o));
    let _ = writeln!(out, "{command}\n```\n");
    out.push_str("## License\n\n");
    match (&license, license_files.is_empty()) {
        (Some(l), true) => {
            let _ = writeln!(out, "`{l}`, inherited from the base model.");
        }
        (Some(l), false) => {
            let _ = writeln!(
                out,
                "`{l}`, inherited from the base model (copied: {}).",
                license_files.join(", ")
            );
        }
        (None, false) => {
            let _ = writeln!(
                out,
                "Inherited from the base model: see {}.",
                license_files.join(", ")
            );
        }
        (None, true) => {
            let _ = writeln!(out, "Inherited from the base model `{base}`.");
        }
    }
    out
}

fn reconstruct_command(o: &ConvertOptions) -> String {
    let mut c = format!(
        "mlx convert -i {} -o {}",
        o.input.display(),
        o.output.display()
    );
    if o.quantize {
        c.push_str(" -q");
    }
    if let Some(b) = o.bits {
        let _ = write!(c, " --q-bits {b}");
    }
    if let Some(g) = o.group_size {
        let _ = write!(c, " --q-group-size {g}");
    }
    if let Some(r) = &o.recipe {
        let _ = write!(c, " --q-recipe {r}");
    }
    if let Some(p) = &o.imatrix {
        let _ = write!(c, " --imatrix-path {}", p.display());
    }
    if let Some(d) = &o.dtype {
        let _ = write!(c, " -d {d}");
    }
    c
}
