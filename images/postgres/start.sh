#!/bin/sh
# Start PostgreSQL with the user and database that LAB_HUB_DB_URL names
# (postgresql://user:password@host[:port]/database): the user is made, or given that password
# again, and the database made with that owner when missing. Then PostgreSQL runs in the
# foreground (docker stop shuts it down cleanly).
set -eu
url="${LAB_HUB_DB_URL:?LAB_HUB_DB_URL is not set: postgresql://user:password@hubdb/database}"
rest="${url#*://}"
creds="${rest%%@*}"
user="${creds%%:*}"
pass="${creds#*:}"
db="${rest#*/}"
db="${db%%\?*}"
ident='^[a-z_][a-z0-9_]*$'
echo "$user" | grep -Eq "$ident" || { echo "lab-postgres: LAB_HUB_DB_URL: user '$user' is not a plain name ([a-z_][a-z0-9_]*)" >&2; exit 2; }
echo "$db" | grep -Eq "$ident" || { echo "lab-postgres: LAB_HUB_DB_URL: database '$db' is not a plain name ([a-z_][a-z0-9_]*)" >&2; exit 2; }
echo "$pass" | grep -Eq '^[A-Za-z0-9._~-]{16,}$' || { echo "lab-postgres: LAB_HUB_DB_URL: the password must be 16 or more letters, digits or ._~- (make up makes one)" >&2; exit 2; }

bin=/usr/lib/postgresql/15/bin
data=/var/lib/postgresql/15/main
conf=/etc/postgresql/15/main/postgresql.conf
# First, on the socket only, to set the user and database up.
"$bin/pg_ctl" -D "$data" -o "-c config_file=$conf -c listen_addresses=''" -w -s start
psql -q -v ON_ERROR_STOP=1 -h /var/run/postgresql -d postgres <<SQL
SELECT 'CREATE ROLE "$user" LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$user')\gexec
ALTER ROLE "$user" LOGIN PASSWORD '$pass';
SELECT 'CREATE DATABASE "$db" OWNER "$user"' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$db')\gexec
SQL
"$bin/pg_ctl" -D "$data" -m fast -w -s stop
echo "lab-postgres: user $user, database $db; starting"
exec "$bin/postgres" -D "$data" -c "config_file=$conf"
