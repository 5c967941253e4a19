//! Lists a GGUF file's tensors grouped by role suffix and type, with total bytes (diagnostic for kernel work).
use std::collections::BTreeMap;

use model::gguf::Gguf;

fn main() {
    let path = std::env::args().nth(1).expect("usage: tensor_types FILE");
    let blob = std::fs::read(&path).expect("read model");
    let g = Gguf::parse(&blob).expect("parse");
    let mut by: BTreeMap<(String, String, String), (usize, usize)> = BTreeMap::new();
    for t in &g.tensors {
        let role = t.name.rsplit_once("blk.").map_or(t.name, |(_, r)| r);
        let role =
            role.split_once('.').map_or(
                role,
                |(n, r)| if n.parse::<u32>().is_ok() { r } else { role },
            );
        let e = by
            .entry((
                role.to_string(),
                format!("{:?}", t.ggml_type),
                format!("{:?}", t.dims()),
            ))
            .or_default();
        e.0 += 1;
        e.1 += t.data.len();
    }
    for ((role, ty, dims), (n, bytes)) in by {
        println!(
            "{role:28} {ty:6} {dims:16} x{n:3} {:8.2} MB",
            bytes as f64 / 1e6
        );
    }
}
