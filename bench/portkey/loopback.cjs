// loopback.cjs: preloaded into Portkey's gateway (node -r) by bench/run.sh. Portkey's
// start-server.js listens on every interface and takes no host option; the benchmark must
// only ever listen on 127.0.0.1. This forces the listening address of every TCP server to
// 127.0.0.1 and, when PORT_FILE is set, writes the bound port there (so --port=0 works).
'use strict';
const net = require('net');
const fs = require('fs');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' || (typeof args[0] === 'string' && /^\d+$/.test(args[0]))) {
    const cb = args.find((a) => typeof a === 'function');
    const backlog = args.find((a, i) => i >= 2 && typeof a === 'number');
    args = [Number(args[0]), '127.0.0.1'];
    if (backlog !== undefined) args.push(backlog);
    if (cb) args.push(cb);
  } else if (args[0] && typeof args[0] === 'object' && args[0].path === undefined) {
    args[0] = { ...args[0], host: '127.0.0.1' };
  }
  if (process.env.PORT_FILE) {
    this.once('listening', () => {
      const a = this.address();
      if (a && typeof a === 'object') {
        fs.writeFileSync(process.env.PORT_FILE + '.tmp', `${a.port}\n`);
        fs.renameSync(process.env.PORT_FILE + '.tmp', process.env.PORT_FILE);
      }
    });
  }
  return listen.apply(this, args);
};
