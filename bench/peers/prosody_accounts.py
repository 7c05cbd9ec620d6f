#!/usr/bin/env python3
"""Write N Prosody accounts straight into its data directory (bench/compare).

`prosodyctl register` starts a Lua process per account (about a second each), far too slow
for 10 000 accounts. Prosody's default storage ("internal") keeps one Lua file per account,
DATA/HOST/accounts/USER.dat, so this writes those files directly, in the format
mod_auth_internal_hashed itself writes: SCRAM-SHA-256 credentials (the config sets
password_hash = "SHA-256") with 4096 PBKDF2 iterations, the same as Starling stores. The
credentials are derived once and shared by all accounts (one salt): the server's work per
login is the same whatever the salt, and it saves N PBKDF2 runs.

usage: prosody_accounts.py DATA_DIR COUNT [--prefix bench] [--domain localhost]
                           [--password bench-pw] [--iterations 4096]
"""
import argparse
import hashlib
import hmac
import os


def prosody_encode(s: str) -> str:
    # util.datamanager: every character outside [a-zA-Z0-9_-] becomes %XX (lowercase hex)
    return "".join(c if (c.isascii() and (c.isalnum() or c in "_-")) else "%%%02x" % ord(c)
                   for c in s)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("count", type=int)
    ap.add_argument("--prefix", default="bench")
    ap.add_argument("--domain", default="localhost")
    ap.add_argument("--password", default="bench-pw")
    ap.add_argument("--iterations", type=int, default=4096)
    a = ap.parse_args()

    salt = "starling-bench-0000-salt"
    salted = hashlib.pbkdf2_hmac("sha256", a.password.encode(), salt.encode(), a.iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).hexdigest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).hexdigest()
    body = ("return {\n"
            f"\t[\"iteration_count\"] = {a.iterations};\n"
            f"\t[\"salt\"] = \"{salt}\";\n"
            f"\t[\"server_key\"] = \"{server_key}\";\n"
            f"\t[\"stored_key\"] = \"{stored_key}\";\n"
            "};\n")
    accounts = os.path.join(a.data_dir, prosody_encode(a.domain), "accounts")
    os.makedirs(accounts, exist_ok=True)
    for i in range(a.count):
        with open(os.path.join(accounts, prosody_encode(f"{a.prefix}{i}") + ".dat"), "w") as f:
            f.write(body)
    print(f"wrote {a.count} accounts to {accounts}")


if __name__ == "__main__":
    main()
