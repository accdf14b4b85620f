//! Evidence for docs/decisions.md: multipart 0.18.0 (archived, RUSTSEC-2023-0050) does not
//! return a file part's bytes exactly when the body arrives in small, irregular reads.
//!
//! One multipart/form-data body with one file part of N random bytes is fed to
//! `multipart::server::Multipart` through a reader that returns at most k bytes per read,
//! k cycling through a fixed pattern. The part's data is read with `read_to_end` and compared.
//!
//!   cargo run --release                    # sweep: sizes 8186..=8198 (+ a few) x 5 seeds x 8 read patterns
//!   cargo run --release -- crafted         # same, plus one read forced to end between the \r and \n
//!   cargo run --release -- fuzz            # 12,000 random irregular read patterns, sizes 8190..=8194
//!   cargo run --release -- scan            # every size 0..=40000, per read pattern (~30 s)
//!   cargo run --release -- trace 8191 1    # one size, one fixed read size: show the reads
use multipart::server::Multipart;
use std::io::{self, Read};

const BOUNDARY: &str = "AdclusterEvidenceBoundary7MA4YWxkTrZu0gW";
const CLOSING: &str = "\r\n--AdclusterEvidenceBoundary7MA4YWxkTrZu0gW--\r\n";

/// splitmix64: deterministic bytes from a seed, no dependency.
fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_add(0x9E3779B97F4A7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            (z ^ (z >> 31)) as u8
        })
        .collect()
}

fn body(data: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
    b.extend_from_slice(b"Content-Disposition: form-data; name=\"file\"; filename=\"blob.bin\"\r\n");
    b.extend_from_slice(b"Content-Type: application/octet-stream\r\n\r\n");
    b.extend_from_slice(data);
    b.extend_from_slice(CLOSING.as_bytes());
    b
}

/// Returns at most `pattern[i % len]` bytes on the i-th read, and never reads past a cut point
/// (so a read can be made to end exactly at a chosen offset).
struct Chunked<'a> {
    src: &'a [u8],
    pos: usize,
    pattern: &'a [usize],
    i: usize,
    cuts: &'a [usize],
    trace: bool,
}

impl Read for Chunked<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut n = self.pattern[self.i % self.pattern.len()].min(out.len());
        self.i += 1;
        if let Some(&c) = self.cuts.iter().find(|&&c| c > self.pos) {
            n = n.min(c - self.pos);
        }
        n = n.min(self.src.len() - self.pos);
        out[..n].copy_from_slice(&self.src[self.pos..self.pos + n]);
        // trace only the source reads that touch the CRLF before the closing boundary
        let cr = self.src.len() - CLOSING.len();
        if self.trace && self.pos <= cr + 1 && self.pos + n > cr {
            println!("  source read: asked {:5}, returned body[{}..{}) of {}", out.len(), self.pos, self.pos + n, self.src.len());
        }
        self.pos += n;
        Ok(n)
    }
}

/// Parse; return the file part's bytes (or the error).
fn parse(body: &[u8], pattern: &[usize], cuts: &[usize]) -> io::Result<Vec<u8>> {
    parse_traced(body, pattern, cuts, false)
}

fn parse_traced(body: &[u8], pattern: &[usize], cuts: &[usize], trace: bool) -> io::Result<Vec<u8>> {
    let reader = Chunked { src: body, pos: 0, pattern, i: 0, cuts, trace };
    let mut mp = Multipart::with_body(reader, BOUNDARY);
    let mut field = mp.read_entry()?.ok_or_else(|| io::Error::other("no field"))?;
    let mut got = Vec::new();
    if trace {
        // plain read() calls with a large buffer, to show what each one hands back
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = field.data.read(&mut buf)?;
            let tail = &buf[n.saturating_sub(2)..n];
            println!("field read() -> {n:5} bytes (total {:5}), last bytes {tail:02x?}", got.len() + n);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    } else {
        field.data.read_to_end(&mut got)?;
    }
    Ok(got)
}

fn describe(expected: &[u8], got: &io::Result<Vec<u8>>) -> (bool, String) {
    match got {
        Err(e) => (false, format!("error: {e}")),
        Ok(g) if g == expected => (true, format!("ok (len {})", g.len())),
        Ok(g) => {
            let first = expected.iter().zip(g).position(|(a, b)| a != b).unwrap_or(expected.len().min(g.len()));
            let tail = &g[first.min(g.len())..];
            (
                false,
                format!(
                    "MISMATCH expected len {} got len {} (first difference at offset {}; got bytes from there: {:02x?})",
                    expected.len(),
                    g.len(),
                    first,
                    &tail[..tail.len().min(8)]
                ),
            )
        }
    }
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "sweep".into());
    let patterns: &[&[usize]] = &[
        &[1, 7, 13, 64, 1000],
        &[1000, 64, 13, 7, 1],
        &[7, 13],
        &[1],
        &[3, 1000, 5],
        &[1500],
        &[4096],
        &[usize::MAX], // whatever the parser asks for
    ];
    let sizes: Vec<usize> = (8186..=8198).chain([0, 1, 2, 1000, 4096, 16383, 65536]).collect();
    let seeds = [1u64, 2, 3, 42, 1234];

    if mode == "trace" {
        let size: usize = std::env::args().nth(2).expect("size").parse().unwrap();
        let read: usize = std::env::args().nth(3).expect("read size").parse().unwrap();
        let data = random_bytes(1, size);
        let b = body(&data);
        println!("payload {size} bytes (seed 1), body {} bytes, the CRLF before the closing boundary at body[{}..{}], reads of at most {read} bytes", b.len(), b.len() - CLOSING.len(), b.len() - CLOSING.len() + 2);
        let got = parse_traced(&b, &[read], &[], true);
        println!("{}", describe(&data, &got).1);
        return;
    }
    if mode == "sweep" {
        let (mut runs, mut bad) = (0, 0);
        for &size in &sizes {
            for &seed in &seeds {
                let data = random_bytes(seed, size);
                let b = body(&data);
                for p in patterns {
                    runs += 1;
                    let got = parse(&b, p, &[]);
                    let (ok, msg) = describe(&data, &got);
                    if !ok {
                        bad += 1;
                        println!("size {size:5} seed {seed:4} reads {p:?}: {msg}");
                    }
                }
            }
        }
        println!("sweep: {runs} runs, {bad} mismatches (sizes {sizes:?}, seeds {seeds:?}, {} read patterns)", patterns.len());
        return;
    }

    if mode == "crafted" {
        // Make one read end between the \r and the \n of the CRLF that precedes the closing
        // boundary (offset `cr + 1`), for several read patterns, sizes and seeds.
        let (mut runs, mut bad) = (0, 0);
        for &size in &sizes {
            for &seed in &seeds {
                let data = random_bytes(seed, size);
                let b = body(&data);
                let cr = b.len() - CLOSING.len();
                assert_eq!(&b[cr..cr + 2], b"\r\n");
                for p in patterns {
                    runs += 1;
                    let got = parse(&b, p, &[cr + 1]);
                    let (ok, msg) = describe(&data, &got);
                    if !ok {
                        bad += 1;
                        if size == 8191 || bad <= 12 {
                            println!("size {size:5} seed {seed:4} reads {p:?} + a read ending at body offset {} (just after the \\r): {msg}", cr + 1);
                        }
                    }
                }
            }
        }
        println!("crafted: {runs} runs, {bad} mismatches");
        return;
    }
    if mode == "fuzz" {
        // Random irregular read patterns (5 sizes in 1..=max, from a seed), random payload.
        let (mut runs, mut bad) = (0, 0);
        let mut shown = 0;
        for max in [16usize, 128, 1500] {
            for trial in 0..4000u64 {
                let r = random_bytes(trial * 7919 + max as u64, 16);
                let pattern: Vec<usize> = r[..5].iter().map(|&x| 1 + (x as usize * 257 + r[5] as usize) % max).collect();
                let size = 8190 + (r[6] as usize % 5);
                let data = random_bytes(trial, size);
                let b = body(&data);
                runs += 1;
                let got = parse(&b, &pattern, &[]);
                let (ok, msg) = describe(&data, &got);
                if !ok {
                    bad += 1;
                    if shown < 15 {
                        shown += 1;
                        println!("size {size} seed {trial} reads {pattern:?}: {msg}");
                    }
                }
            }
        }
        println!("fuzz: {runs} runs, {bad} mismatches");
        return;
    }
    if mode == "scan" {
        // Which payload sizes 0..=40000 come back wrong, one read pattern at a time (seed 1).
        for p in patterns {
            let mut bad_sizes = Vec::new();
            for size in 0..=40000usize {
                let data = random_bytes(1, size);
                let got = parse(&body(&data), p, &[]);
                if !describe(&data, &got).0 {
                    bad_sizes.push(size);
                }
            }
            println!("reads {p:?}: {} bad sizes in 0..=40000: {:?}", bad_sizes.len(), &bad_sizes[..bad_sizes.len().min(20)]);
        }
        return;
    }
    panic!("modes: sweep | crafted | fuzz | scan | trace SIZE READ");
}
