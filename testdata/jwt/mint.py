"""Mint access tokens with PyJWT, a JOSE implementation independent of ours.

jwt_test.go runs this with /usr/bin/python3 (Debian's python3-jwt and
python3-cryptography). It reads one JSON request on stdin:

    {"secret": "...",                       # the HS256 secret, as text
     "keys":   [{"alg": "ES256", "kid": "..."}, ...],
     "tokens": [{"alg": "ES256", "kid": "...", "claims": {...}}, ...]}

generates a fresh key pair for each entry of "keys", signs each token with
the key of its kid (HS256 with the secret; "kid" may then be omitted), and
writes {"jwks": {"keys": [...]}, "tokens": ["...", ...]} on stdout: the public
keys as PyJWT renders them, and the tokens in request order.
"""

import json
import sys

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm


def new_key(alg):
    """Return a private key for alg and its public JWK as a dict."""
    if alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
        jwk = ECAlgorithm.to_jwk(private.public_key())
    elif alg == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = RSAAlgorithm.to_jwk(private.public_key())
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
        jwk = OKPAlgorithm.to_jwk(private.public_key())
    else:
        raise SystemExit("mint.py: no key type for alg " + repr(alg))
    return private, json.loads(jwk)


def main():
    request = json.load(sys.stdin)
    private_keys, public_jwks = {}, []
    for spec in request.get("keys", []):
        private, jwk = new_key(spec["alg"])
        jwk.update(kid=spec["kid"], alg=spec["alg"], use="sig")
        private_keys[spec["kid"]] = private
        public_jwks.append(jwk)

    tokens = []
    for spec in request.get("tokens", []):
        if spec["alg"] == "HS256":
            key = request["secret"]
        else:
            key = private_keys[spec["kid"]]
        headers = {"kid": spec["kid"]} if spec.get("kid") else None
        tokens.append(jwt.encode(spec["claims"], key, algorithm=spec["alg"], headers=headers))

    json.dump({"jwks": {"keys": public_jwks}, "tokens": tokens}, sys.stdout)


if __name__ == "__main__":
    main()
