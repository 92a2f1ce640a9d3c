// Incremental SHA-256 (FIPS 180-4). SubtleCrypto.digest only hashes a whole buffer at once, and a model
// is hashed while it downloads, chunk by chunk, without ever being held in memory whole.

const K = new Int32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);
const H0 = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

/** Incremental SHA-256: `new Sha256().update(a).update(b).hex()`. */
export class Sha256 {
  constructor() {
    this._h = new Int32Array(H0);
    this._w = new Int32Array(64);
    this._block = new Uint8Array(64); // a partial block carried between update() calls
    this._blockLen = 0;
    this._bytes = 0; // total bytes hashed (a double: exact up to 2^53)
    this._done = false;
  }

  /** Hash more bytes. @param {Uint8Array} data @returns {this} */
  update(data) {
    if (this._done) throw new Error("Sha256: update() after digest");
    let pos = 0;
    const n = data.length;
    this._bytes += n;
    if (this._blockLen > 0) {
      const take = Math.min(64 - this._blockLen, n);
      this._block.set(data.subarray(0, take), this._blockLen);
      this._blockLen += take;
      pos = take;
      if (this._blockLen < 64) return this;
      this._blocks(this._block, 0, 64);
      this._blockLen = 0;
    }
    const whole = n - ((n - pos) % 64);
    this._blocks(data, pos, whole);
    pos = whole;
    if (pos < n) {
      this._block.set(data.subarray(pos), 0);
      this._blockLen = n - pos;
    }
    return this;
  }

  /** Finish and return the 32-byte digest. @returns {Uint8Array} */
  digest() {
    if (!this._done) {
      const bits = this._bytes * 8;
      const tail = new Uint8Array(this._blockLen < 56 ? 64 : 128);
      tail.set(this._block.subarray(0, this._blockLen));
      tail[this._blockLen] = 0x80;
      const dv = new DataView(tail.buffer);
      dv.setUint32(tail.length - 8, Math.floor(bits / 2 ** 32));
      dv.setUint32(tail.length - 4, bits >>> 0);
      this._blocks(tail, 0, tail.length);
      this._done = true;
    }
    const out = new Uint8Array(32);
    const dv = new DataView(out.buffer);
    for (let i = 0; i < 8; i++) dv.setInt32(i * 4, this._h[i]);
    return out;
  }

  /** Finish and return the digest as lowercase hex. @returns {string} */
  hex() {
    return Array.from(this.digest(), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // Compress the 64-byte blocks d[p..end): the state stays in locals across blocks (about 15% faster in V8).
  _blocks(d, p, end) {
    const w = this._w;
    const h = this._h;
    let h0 = h[0], h1 = h[1], h2 = h[2], h3 = h[3], h4 = h[4], h5 = h[5], h6 = h[6], h7 = h[7];
    for (; p < end; p += 64) {
      for (let i = 0, q = p; i < 16; i++, q += 4) w[i] = (d[q] << 24) | (d[q + 1] << 16) | (d[q + 2] << 8) | d[q + 3];
      for (let i = 16; i < 64; i++) {
        const x = w[i - 15];
        const y = w[i - 2];
        const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
        const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
        w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
      }
      let a = h0, b = h1, c = h2, d3 = h3, e = h4, f = h5, g = h6, h8 = h7;
      for (let i = 0; i < 64; i++) {
        const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
        const t1 = (h8 + S1 + ((e & f) ^ (~e & g)) + K[i] + w[i]) | 0;
        const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
        const t2 = (S0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
        h8 = g; g = f; f = e; e = (d3 + t1) | 0;
        d3 = c; c = b; b = a; a = (t1 + t2) | 0;
      }
      h0 = (h0 + a) | 0; h1 = (h1 + b) | 0; h2 = (h2 + c) | 0; h3 = (h3 + d3) | 0;
      h4 = (h4 + e) | 0; h5 = (h5 + f) | 0; h6 = (h6 + g) | 0; h7 = (h7 + h8) | 0;
    }
    h[0] = h0; h[1] = h1; h[2] = h2; h[3] = h3; h[4] = h4; h[5] = h5; h[6] = h6; h[7] = h7;
  }
}

/** SHA-256 of a string (UTF-8) as hex; used to name cache entries of models known only by URL. */
export function sha256Text(text) {
  return new Sha256().update(new TextEncoder().encode(text)).hex();
}
