// The peer statelessd is compared with: http.createServer and amqplib, one
// shared channel, no per-user logins, no outbox.  It takes statelessd's
// URL and form so the same wrk script drives both; ?confirm=1 waits for the
// broker's ack on a confirm channel.  Usage: node server.js PORT AMQP_URL
'use strict';
const http = require('http');
const querystring = require('querystring');
const amqp = require('amqplib');

async function main(port, url) {
  const connection = await amqp.connect(url);
  const plain = await connection.createChannel();
  const confirming = await connection.createConfirmChannel();
  http.createServer((request, response) => {
    const chunks = [];
    request.on('data', (chunk) => chunks.push(chunk));
    request.on('end', () => {
      const [path, query] = request.url.split('?');
      const [, , exchange, routingKey] = path.split('/').map(decodeURIComponent);
      const form = querystring.parse(Buffer.concat(chunks).toString());
      const body = Buffer.from(form.body || '');
      const options = {contentType: form.content_type};
      const answer = (status) => { response.statusCode = status; response.end(); };
      if (query === 'confirm=1') {
        confirming.publish(exchange, routingKey, body, options,
                           (error) => answer(error ? 503 : 204));
      } else {
        plain.publish(exchange, routingKey, body, options);
        answer(204);
      }
    });
  }).listen(port, '127.0.0.1', () => console.log('listening on ' + port));
}

main(Number(process.argv[2]), process.argv[3]).catch((error) => {
  console.error(error);
  process.exit(1);
});
