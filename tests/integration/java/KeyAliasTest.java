/*
 * Java 17 SunPKCS11 on any cmkp11 token with "certificates = generate",
 * without a login: the PKCS11 KeyStore lists each named alias (a key seen
 * through its certificate object), and the first one's private key signs
 * and unwraps an AES data key wrapped outside the token with the
 * certificate's public key; the unwrapped key then opens AES-GCM data
 * sealed with the original. TAP output.
 *
 *   java KeyAliasTest SUNPKCS11-CONFIG ALIAS [ALIAS...]
 */
import java.nio.charset.StandardCharsets;
import java.security.Key;
import java.security.KeyStore;
import java.security.NoSuchAlgorithmException;
import java.security.PrivateKey;
import java.security.Provider;
import java.security.PublicKey;
import java.security.SecureRandom;
import java.security.Security;
import java.security.Signature;
import java.security.cert.X509Certificate;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import javax.crypto.Cipher;
import javax.crypto.KeyGenerator;
import javax.crypto.NoSuchPaddingException;
import javax.crypto.SecretKey;
import javax.crypto.spec.GCMParameterSpec;

public class KeyAliasTest {
    private static int count = 0;
    private static int failed = 0;

    private static boolean ok(boolean cond, String what) {
        count++;
        if (!cond) {
            failed++;
        }
        System.out.println((cond ? "ok " : "not ok ") + count + " - " + what);
        return cond;
    }

    private static void diag(String what) {
        System.out.println("# " + what);
    }

    private static byte[] gcm(int mode, Key key, byte[] iv, byte[] in, Provider p)
            throws Exception {
        Cipher c = Cipher.getInstance("AES/GCM/NoPadding", p);
        c.init(mode, key, new GCMParameterSpec(128, iv));
        c.updateAAD("cmkp11 envelope".getBytes(StandardCharsets.UTF_8));
        return c.doFinal(in);
    }

    private static void finish() {
        System.out.println("1.." + count);
        System.exit(failed == 0 ? 0 : 1);
    }

    public static void main(String[] args) throws Exception {
        Provider p11 = Security.getProvider("SunPKCS11").configure(args[0]);
        Security.addProvider(p11);
        Provider jce = Security.getProvider("SunJCE");

        KeyStore ks = KeyStore.getInstance("PKCS11", p11);
        ks.load(null, null);
        List<String> aliases = Collections.list(ks.aliases());
        Collections.sort(aliases);
        diag("aliases: " + aliases);
        for (int i = 1; i < args.length; i++) {
            ok(aliases.contains(args[i]) && ks.isKeyEntry(args[i]),
               "the PKCS11 KeyStore lists the key " + args[i]);
        }
        String alias = args[1];
        PrivateKey priv = (PrivateKey) ks.getKey(alias, null);
        X509Certificate cert = (X509Certificate) ks.getCertificate(alias);
        if (!ok(priv != null && cert != null, alias + ": a private key and a certificate")) {
            finish();
        }
        PublicKey pub = cert.getPublicKey();
        ok(("CN=" + alias).equals(cert.getSubjectX500Principal().getName()),
           "the certificate's subject is CN=" + alias);
        boolean verified = false;
        try {
            cert.verify(pub);
            verified = true;
        } catch (Exception e) {
            diag("verify: " + e);
        }
        ok(verified, "it is signed by the key itself");

        byte[] msg = "customer-managed key".getBytes(StandardCharsets.UTF_8);
        Signature s = Signature.getInstance("SHA256withRSA", p11);
        s.initSign(priv);
        s.update(msg);
        byte[] sig = s.sign();
        Signature v = Signature.getInstance("SHA256withRSA", "SunRsaSign");
        v.initVerify(pub);
        v.update(msg);
        ok(v.verify(sig), "SHA256withRSA through SunPKCS11 verifies with the certificate");

        /* The envelope: data sealed outside with a fresh AES key. */
        KeyGenerator kg = KeyGenerator.getInstance("AES", jce);
        kg.init(256);
        SecretKey dek = kg.generateKey();
        byte[] iv = new byte[12];
        new SecureRandom().nextBytes(iv);
        byte[] data = "data sealed under a key in the vault".getBytes(StandardCharsets.UTF_8);
        byte[] sealed = gcm(Cipher.ENCRYPT_MODE, dek, iv, data, jce);

        /* SunPKCS11 in Java 17 has no RSA-OAEP cipher; use it where offered. */
        String[] transformations = {"RSA/ECB/OAEPWithSHA-1AndMGF1Padding",
                                    "RSA/ECB/PKCS1Padding"};
        int tried = 0;
        for (String tr : transformations) {
            Cipher unwrap;
            try {
                unwrap = Cipher.getInstance(tr, p11);
            } catch (NoSuchAlgorithmException | NoSuchPaddingException e) {
                diag("SunPKCS11 offers no " + tr);
                continue;
            }
            tried++;
            Cipher wrap = Cipher.getInstance(tr, jce);
            wrap.init(Cipher.WRAP_MODE, pub);
            byte[] wrapped = wrap.wrap(dek);
            Key back = null;
            try {
                unwrap.init(Cipher.UNWRAP_MODE, priv);
                back = unwrap.unwrap(wrapped, "AES", Cipher.SECRET_KEY);
            } catch (Exception e) {
                diag(tr + " unwrap: " + e);
            }
            if (!ok(back != null, tr + ": SunPKCS11 unwraps the data key")) {
                continue;
            }
            byte[] opened = null;
            try {
                opened = gcm(Cipher.DECRYPT_MODE, back, iv, sealed, p11);
            } catch (Exception e) {
                diag("AES-GCM through SunPKCS11: " + e);
            }
            ok(opened != null && Arrays.equals(opened, data),
               tr + ": it opens AES-GCM data sealed with the original");
        }
        ok(tried > 0, "SunPKCS11 offers an RSA cipher to unwrap with");
        finish();
    }
}
