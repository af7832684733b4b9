//! A compile bomb built from a real plugin, for the hostile-plugin tests and the sandbox
//! benchmark. Free of test-only build variables, so benchmark programs include it too.

/// `plugin` (a component) with one more core module appended: a single function of about
/// `body_bytes` bytes, one loop around straight-line code over 2,000 locals that all stay live
/// around it, which the compiler takes long to compile (about 11 s for 1 MiB, 76 s for 3 MiB). The component's imports and exports are unchanged, so every check that needs no
/// compilation passes and only a compile budget can stop it.
pub fn compile_bomb(plugin: &[u8], body_bytes: usize) -> Vec<u8> {
    const LOCALS: u32 = 2_000;
    let mut body = Vec::new();
    // One local declaration: LOCALS locals of type i64.
    body.push(1);
    leb128(&mut body, LOCALS);
    body.push(0x7e);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next_local = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % u64::from(LOCALS)) as u32
    };
    // loop (every local is carried around it) … br_if 0 end
    body.extend([0x03, 0x40]);
    while body.len() < body_bytes {
        // local.get a; local.get b; i64.add; local.set c
        body.push(0x20);
        leb128(&mut body, next_local());
        body.push(0x20);
        leb128(&mut body, next_local());
        body.push(0x7c);
        body.push(0x21);
        leb128(&mut body, next_local());
    }
    // local.get 0; i32.wrap_i64; br_if 0; end (loop); end (function)
    body.extend([0x20, 0x00, 0xa7, 0x0d, 0x00, 0x0b, 0x0b]);

    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(&mut module, 1, &[1, 0x60, 0, 0]); // types: () -> ()
    section(&mut module, 3, &[1, 0]); // functions: one of type 0
    let mut code = vec![1];
    leb128(&mut code, body.len() as u32);
    code.extend(body);
    section(&mut module, 10, &code);

    let mut bomb = plugin.to_vec();
    section(&mut bomb, 1, &module); // a component's core module section
    bomb
}

fn section(out: &mut Vec<u8>, id: u8, contents: &[u8]) {
    out.push(id);
    leb128(out, contents.len() as u32);
    out.extend_from_slice(contents);
}

fn leb128(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}
