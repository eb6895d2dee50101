module tuneguard.local/pause

go 1.22
