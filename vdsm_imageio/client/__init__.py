"""The transfer client: ``vdsm-imageio upload``, ``download`` and ``checksum``.

It speaks only the ``/images`` HTTP API (OPTIONS, ranged GET, PUT with
Content-Range, PATCH zero and flush, extents, checksum), so it works with
any daemon that serves it: ours, ovirt-imageio's, or a proxy. The modules,
by concept:

- ``http``: the transfer URL and connections (TLS with a CA, or the
  daemon's unix socket on its own host);
- ``images``: the API's requests over one connection, statuses to errors;
- ``local``: the image on this host, raw directly or anything else through
  a private qemu-nbd (``nbdread``: reads with several commands in flight;
  over the daemon's unix socket an upload splices qemu-nbd's replies
  instead, ``backends.nbdwire`` and ``zerocopy``);
- ``plan``: what to do with each range (pure), ``ranges``: sets of ranges;
- ``workers``: one thread per connection, items in image order,
  checkpoints into the ``journal``;
- ``progress``, ``checksum``, ``errors`` (with the exit codes);
- ``session``, ``upload``, ``download``, ``cli``: the commands.
"""
