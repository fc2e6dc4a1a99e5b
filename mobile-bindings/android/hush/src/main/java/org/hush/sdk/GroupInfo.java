package org.hush.sdk;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;

/**
 * A room as this device knows it (see {@link HushClient#createGroup}). Immutable. Its members'
 * devices hold it: every change is signed by its author and checked by every member, so neither
 * a relay nor a member who is not an admin can change it.
 */
public final class GroupInfo {
    private final String id;
    private final String name;
    private final long version;
    private final boolean member;
    private final boolean admin;
    private final List<String> members;
    private final List<String> admins;
    private final long changedAtMillis;
    private final boolean sharesPresence;

    /** Called by the native code. */
    GroupInfo(String id, byte[] name, long version, boolean member, boolean admin, String[] members,
              boolean[] isAdmin, long changedAtMillis, boolean sharesPresence) {
        this.id = id;
        this.name = new String(name, StandardCharsets.UTF_8);
        this.version = version;
        this.member = member;
        this.admin = admin;
        this.members = Collections.unmodifiableList(Arrays.asList(members.clone()));
        String[] a = new String[members.length];
        int n = 0;
        for (int i = 0; i < members.length; i++) {
            if (isAdmin[i]) {
                a[n++] = members[i];
            }
        }
        this.admins = Collections.unmodifiableList(Arrays.asList(Arrays.copyOf(a, n)));
        this.changedAtMillis = changedAtMillis;
        this.sharesPresence = sharesPresence;
    }

    /** The room's id: 32 hexadecimal characters, what every group call takes. */
    public String id() {
        return id;
    }

    /** Its name, as people see it (not unique). */
    public String name() {
        return name;
    }

    /** 1 at creation, one more at every change. */
    public long version() {
        return version;
    }

    /** This user is in the room (false: it left or was removed; its history remains). */
    public boolean isMember() {
        return member;
    }

    /** This user may change the room. */
    public boolean isAdmin() {
        return admin;
    }

    public List<String> members() {
        return members;
    }

    public List<String> admins() {
        return admins;
    }

    /** When the last change was made (its author's clock). */
    public long changedAtMillis() {
        return changedAtMillis;
    }

    /** This user shares its presence with the room ({@link HushClient#shareGroupPresence}). */
    public boolean sharesPresence() {
        return sharesPresence;
    }

    @Override
    public String toString() {
        return "GroupInfo{" + id + " \"" + name + "\" v" + version + ", " + members.size() + " member(s)}";
    }
}
