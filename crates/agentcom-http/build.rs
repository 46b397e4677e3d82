//! Turns `docs/openapi.yaml` (the API description, written and reviewed as YAML) into the
//! JSON that `GET /api/openapi.json` serves, once, at build time: the binary embeds the
//! JSON and carries no YAML parser. A description that is not valid YAML, or that uses
//! YAML a JSON document cannot hold (aliases, non-string keys, infinite numbers), fails
//! the build with the reason.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo"));
    let source = manifest_dir.join("../../docs/openapi.yaml");
    println!("cargo:rerun-if-changed={}", source.display());
    let text = std::fs::read_to_string(&source)
        .unwrap_or_else(|e| fail(&source, &format!("cannot read it: {e}")));
    let docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| fail(&source, &e.to_string()));
    let [doc] = docs.as_slice() else {
        fail(&source, "it must hold exactly one YAML document");
    };
    let mut json = String::with_capacity(text.len());
    write_json(doc, "", &mut json).unwrap_or_else(|e| fail(&source, &e));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo"));
    std::fs::write(out.join("openapi.json"), &json).expect("write openapi.json");
    // An entity tag for caches: the document changes only with the binary.
    std::fs::write(
        out.join("openapi.etag"),
        format!("\"{:016x}\"", fnv1a(json.as_bytes())),
    )
    .expect("write openapi.etag");
}

fn fail(path: &Path, why: &str) -> ! {
    panic!("{}: {why}", path.display());
}

/// Write `node` as compact JSON; `at` is its location for error messages.
fn write_json(node: &Yaml, at: &str, out: &mut String) -> Result<(), String> {
    match node {
        Yaml::Null => out.push_str("null"),
        Yaml::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        Yaml::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        Yaml::Real(text) => match node.as_f64() {
            Some(f) if f.is_finite() => {
                let _ = write!(out, "{f:?}");
            }
            _ => return Err(format!("{at}: {text} is not a finite number")),
        },
        Yaml::String(s) => write_string(s, out),
        Yaml::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, &format!("{at}/{i}"), out)?;
            }
            out.push(']');
        }
        Yaml::Hash(map) => {
            out.push('{');
            for (i, (key, value)) in map.iter().enumerate() {
                let Yaml::String(key) = key else {
                    return Err(format!("{at}: the key {key:?} is not a string (quote it)"));
                };
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_json(value, &format!("{at}/{key}"), out)?;
            }
            out.push('}');
        }
        Yaml::Alias(_) | Yaml::BadValue => {
            return Err(format!("{at}: YAML aliases have no JSON form"));
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// FNV-1a, 64 bits: enough to tell two versions of the document apart.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
