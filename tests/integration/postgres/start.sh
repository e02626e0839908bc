# Start PostgreSQL listening on the network, with a "lab" user (password "lab") owning "gradebook".
set -e
conf=/etc/postgresql/15/main
echo "listen_addresses = '*'" >> $conf/postgresql.conf
echo "host all all 0.0.0.0/0 scram-sha-256" >> $conf/pg_hba.conf
/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main -c config_file=$conf/postgresql.conf &
until pg_isready -q -h 127.0.0.1; do sleep 0.2; done
psql -h /var/run/postgresql -c "CREATE ROLE lab LOGIN PASSWORD 'lab'" >/dev/null
psql -h /var/run/postgresql -c "CREATE DATABASE gradebook OWNER lab" >/dev/null
echo "ready for the lab"
wait
