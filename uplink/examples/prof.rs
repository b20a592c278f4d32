use loam_common::encryption::{self, Key};
use loam_common::erasure::ErasureCoder;
use std::time::Instant;
fn main() {
    let data = vec![5u8; 64 << 20];
    let coder = ErasureCoder::new("4/6/8/10".parse().unwrap());
    let key = Key::random();
    let row = 16 << 20;
    let t = Instant::now();
    let mut rows = Vec::new();
    for i in 0..4 {
        let mut out = Vec::new();
        encryption::encrypt_row(&key, 0, &data[i * row..(i + 1) * row], &mut out);
        rows.push(out);
    }
    println!(
        "encrypt {:.0} MB/s",
        64.0 * 1.048576 / t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let refs: Vec<&[u8]> = rows.iter().map(|r| r.as_slice()).collect();
    let parity = coder.encode(&refs).unwrap();
    println!(
        "rs encode {:.0} MB/s (of data)",
        64.0 * 1.048576 / t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    for p in rows.iter().chain(parity.iter()) {
        std::hint::black_box(blake3::hash(p));
    }
    println!(
        "blake3 {:.0} MB/s (of data), {:.0} MB/s raw",
        64.0 * 1.048576 / t.elapsed().as_secs_f64(),
        160.0 * 1.048576 / t.elapsed().as_secs_f64()
    );
}
