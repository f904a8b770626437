# Varnish as a layer Fresco forwards its invalidations to (README, "Other
# layers"). Stock Varnish 7, built-in vmods only. Edit the backend's host and
# port (and, if Fresco runs on another machine, the `fresco` ACL); nothing
# else needs to change.
vcl 4.1;

import purge;
import std;

backend default {
    .host = "127.0.0.1";
    .port = "8080";
}

# Who may send PURGE and BAN: the Fresco nodes.
acl fresco {
    "127.0.0.1";
    "::1";
}

sub vcl_recv {
    if (req.method == "PURGE") {
        if (client.ip !~ fresco) {
            return (synth(405, "PURGE is not allowed from here"));
        }
        return (hash);
    }
    if (req.method == "BAN") {
        if (client.ip !~ fresco) {
            return (synth(405, "BAN is not allowed from here"));
        }
        # The patterns come from Fresco with every special byte escaped as
        # \x{HH}, so they hold no spaces, quotes or operators.
        if (req.http.Fresco-Ban-All) {
            ban("obj.status != 0");
        } elsif (req.http.Fresco-Tag-Regex) {
            ban("obj.http.Fresco-Tags ~ " + req.http.Fresco-Tag-Regex);
        } elsif (req.http.Fresco-Url-Regex) {
            ban("obj.http.Fresco-Host == " + std.tolower(req.http.host) +
                " && obj.http.Fresco-Url ~ " + req.http.Fresco-Url-Regex);
        } else {
            return (synth(400, "BAN needs Fresco-Ban-All, Fresco-Tag-Regex or Fresco-Url-Regex"));
        }
        return (synth(200, "Banned"));
    }
}

sub vcl_hit {
    if (req.method == "PURGE") {
        if (req.http.Fresco-Mode == "soft") {
            purge.soft(0s);
        } else {
            purge.hard();
        }
        return (synth(200, "Purged"));
    }
}

sub vcl_miss {
    if (req.method == "PURGE") {
        if (req.http.Fresco-Mode == "soft") {
            purge.soft(0s);
        } else {
            purge.hard();
        }
        return (synth(200, "Purged"));
    }
}

sub vcl_backend_response {
    # What bans select on, kept with the object (obj.* only, so the ban
    # lurker can test stored objects without a request).
    set beresp.http.Fresco-Host = std.tolower(bereq.http.host);
    set beresp.http.Fresco-Url = bereq.url;
    set beresp.http.Fresco-Tags = " " + beresp.http.Surrogate-Key + " " +
        regsuball(beresp.http.Cache-Tag, "\s*,\s*", " ") + " ";
}

sub vcl_deliver {
    unset resp.http.Fresco-Host;
    unset resp.http.Fresco-Url;
    unset resp.http.Fresco-Tags;
}
