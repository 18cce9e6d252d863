#!/usr/bin/env python3
# e2e/git_https_server.py - a local HTTPS git server for the builder tests and benchmarks.
#
#   python3 e2e/git_https_server.py ROOT EXPECTED_TOKEN LOG_PATH PORT_FILE CERT KEY
#
# Listens on 127.0.0.1 (a free port, written to PORT_FILE once it listens), TLS with CERT/KEY.
# Used by e2e/builder_secret_test.sh and benches/clone_large_repo.sh. LOG_PATH gets one JSON
# line per request (method, path, Authorization, headers); /dev/null records nothing.
# Serves the bare repositories under ROOT over HTTPS, only to requests with the right
# Authorization header, and records every request. URL path prefixes choose the protocol:
#   /<repo>.git/...       smart http (git http-backend), protocol v2 when the client asks:
#                         fetch by SHA and shallow fetches are allowed
#   /v0/<repo>.git/...    smart http, protocol v0 only (the Git-Protocol header is dropped):
#                         a want of an unadvertised SHA is refused ("not our ref")
#   /dumb/<repo>.git/...  the dumb http protocol (static files): no shallow, no filter
import base64, http.server, json, os, ssl, subprocess, sys, urllib.parse
root, expected_token, log_path, port_file, cert, key = sys.argv[1:7]
expected = "Basic " + base64.b64encode(f"x-access-token:{expected_token}".encode()).decode()

class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def empty(self, code):
        self.send_response(code)
        if code == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="test"')
        self.send_header("Content-Length", "0")
        self.end_headers()
    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                n = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if n == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(n)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))
    def handle_any(self, method):
        auth = self.headers.get("Authorization")
        with open(log_path, "a") as f:
            f.write(json.dumps({"method": method, "path": self.path, "authorization": auth,
                                "headers": dict(self.headers.items())}) + "\n")
        data = self.body() if method == "POST" else b""
        if auth != expected:
            return self.empty(401)
        u = urllib.parse.urlparse(self.path)
        rel = u.path.lstrip("/")
        mode = "smart"
        for m in ("dumb", "v0"):
            if rel.startswith(m + "/"):
                mode, rel = m, rel[len(m) + 1:]
        p = os.path.realpath(os.path.join(root, rel))
        if not p.startswith(os.path.realpath(root) + os.sep):
            return self.empty(404)
        if mode == "dumb":
            if method != "GET" or not os.path.isfile(p):
                return self.empty(404)
            out = open(p, "rb").read()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
            return
        env = {"PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": root, "GIT_HTTP_EXPORT_ALL": "1",
               "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
               "REQUEST_METHOD": method, "PATH_INFO": "/" + rel, "QUERY_STRING": u.query,
               "CONTENT_TYPE": self.headers.get("Content-Type", ""),
               "CONTENT_LENGTH": str(len(data)), "REMOTE_ADDR": "127.0.0.1"}
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if mode == "smart" and self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        r = subprocess.run(["git", "http-backend"], input=data, env=env, capture_output=True)
        head, _, out = r.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, out = r.stdout.partition(b"\n\n")
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.split()[0])
            elif k:
                headers.append((k, v.strip()))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def do_GET(self):
        self.handle_any("GET")
    def do_POST(self):
        self.handle_any("POST")

srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
with open(port_file, "w") as f:
    f.write(str(srv.server_address[1]))
srv.serve_forever()
